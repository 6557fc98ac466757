"""The CPU suite's building blocks beyond the side-by-side timings: the one-device training
program, matmul peaks, the step's memory by remat policy, compile time by depth, input-pipeline
throughput and the machine's load."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import tempfile
import time
from typing import Any

from benchmarks import common
from benchmarks import input_pipeline as ip
from configs import common as config_common
from ib_jax import sharding
from ib_jax.contract.model import ModelConfig, QFormerConfig, T5Config, VisionConfig, to_config_dict
from ib_jax.train import trainer


def load_snapshot() -> str:
    """The load average and the busiest other processes, as seen now."""
    load = os.getloadavg()
    try:
        top = subprocess.run(
            ["ps", "-eo", "pcpu,pid,args", "--sort=-pcpu"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.splitlines()[1:4]
        mine = str(os.getpid())
        top = [
            " ".join(line.split()[:1] + line.split()[2:5])[:90]
            for line in top
            if line.split()[1] != mine
        ]
    except (OSError, subprocess.SubprocessError):  # informational only
        top = []
    return f"loadavg {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}; busiest others: {top}"


def matmul_peak(size: int, calls: int) -> dict[str, float]:
    """fp32 FLOP/s of a jitted `size`^2 jnp.dot (XLA) and torch.mm at the pinned thread count:
    median and best of `calls`."""
    import jax
    import jax.numpy as jnp
    import torch

    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
    dot = jax.jit(jnp.dot)
    xla = common.timed_calls(
        lambda: dot(a, b).block_until_ready(), warmup=2, calls=calls, budget_s=1e9
    )
    ta, tb = torch.randn(size, size), torch.randn(size, size)
    tor = common.timed_calls(lambda: torch.mm(ta, tb), warmup=2, calls=calls, budget_s=1e9)
    flop = 2.0 * size**3
    return {
        "size": size,
        "xla_flops_per_s": flop / xla["median_s"],
        "xla_best_flops_per_s": flop / xla["min_s"],
        "torch_flops_per_s": flop / tor["median_s"],
        "torch_best_flops_per_s": flop / tor["min_s"],
    }


def train_config(bc, model_config, *, scan: bool = False, remat: str = "none"):
    """An ml_collections training config for `build_program` (one device, fp32 everywhere)."""
    import ml_collections

    config = ml_collections.ConfigDict()
    fp32 = dict(dtype="float32", param_dtype="float32")
    config.model = to_config_dict(
        dataclasses.replace(model_config, scan_layers=scan, remat_policy=remat, **fp32)
    )
    config.data = ml_collections.ConfigDict(
        dict(
            global_batch_size=bc.batch,
            image_size=bc.image_size,
            qformer_max_len=bc.instruction_len,
            text_max_len=bc.instruction_len,
            target_max_len=bc.target_len,
        )
    )
    config.mesh = config_common.mesh(data=1)
    config.train = config_common.train(
        frozen_dtype="float32", warmup_steps=10, num_steps=1000, learning_rate=1e-5
    )
    config.init = ml_collections.ConfigDict(dict(pretrained=""))
    return config


def one_device_program(config):
    """(TrainProgram, mesh, rules) of the trainer for `config` on the first device."""
    import jax

    mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
    rules = sharding.axis_rules(config.mesh)
    with sharding.activate(mesh, rules):
        return trainer.build_program(config, mesh, rules), mesh, rules


def memory_by_remat(bc, model_config, headline: dict) -> dict[str, dict]:
    """`compiled.memory_analysis()` of the benchmark step per remat policy (`bc.memory_remat`)."""
    out = {}
    for remat in bc.memory_remat:
        if remat == "none":
            out["none"] = headline
            continue
        program, _, _ = one_device_program(train_config(bc, model_config, remat=remat))
        compiled = program.step_fn.lower(
            program.abstract_state, program.abstract_frozen, program.abstract_batch
        ).compile()
        out[remat] = common.compiled_memory(compiled) | {"flops": common.compiled_flops(compiled)}
    return out


def compile_times(bc) -> dict[str, dict[str, float]]:
    """Seconds to trace + lower + compile the training step, tiny widths, by LM depth and scan."""
    w = bc.compile_width
    small = dataclasses.replace(
        bc,
        image_size=2 * bc.patch_size,
        batch=2,
        instruction_len=8,
        target_len=4,
        num_query_tokens=4,
    )
    out = {}
    for layers in bc.compile_layers:
        for scan in bc.compile_scan:
            cfg = ModelConfig(
                vision=VisionConfig(
                    hidden_size=w,
                    intermediate_size=2 * w,
                    num_layers=2,
                    num_heads=2,
                    image_size=small.image_size,
                    patch_size=bc.patch_size,
                ),
                qformer=QFormerConfig(
                    vocab_size=64,
                    hidden_size=w,
                    intermediate_size=2 * w,
                    num_layers=2,
                    num_heads=2,
                    max_position_embeddings=32,
                    encoder_hidden_size=w,
                ),
                text=T5Config(
                    vocab_size=64,
                    d_model=w,
                    d_kv=8,
                    d_ff=2 * w,
                    num_heads=2,
                    num_layers=layers // 2,
                    num_decoder_layers=layers // 2,
                    relative_attention_num_buckets=8,
                    relative_attention_max_distance=16,
                ),
                num_query_tokens=4,
            )
            start = time.perf_counter()
            program, _, _ = one_device_program(train_config(small, cfg, scan=scan))
            lowered = program.step_fn.lower(
                program.abstract_state, program.abstract_frozen, program.abstract_batch
            )
            traced = time.perf_counter()
            lowered.compile()
            done = time.perf_counter()
            out[f"{layers} layers, scan={'on' if scan else 'off'}"] = {
                "total_s": done - start,
                "trace_lower_s": traced - start,
                "xla_compile_s": done - traced,
                "hlo_lines": lowered.as_text().count("\n"),
            }
    return out


def input_pipeline(bc) -> dict[str, Any]:
    """Examples/s of the real training pipeline at 224 px from JPEGs, no worker processes."""
    with tempfile.TemporaryDirectory() as root:
        ann = ip.write_jpegs(root, bc.pipeline_images)
        return ip.measure(root, ann, workers=0, batch_size=bc.batch, batches=bc.pipeline_batches)
