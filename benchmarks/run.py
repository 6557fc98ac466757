"""ib_jax against the PyTorch reference (HF transformers InstructBLIP, CPU): one markdown table.

  python -m benchmarks.run                  # the benchmark configuration (about 10 minutes on 2 cores)
  python -m benchmarks.run --tiny           # seconds; what tests/test_benchmarks.py runs
  python -m benchmarks.run --threads=1 --json=/tmp/bench.json --markdown=/tmp/bench.md

Same model, same weights, same batch, same threads, fp32:
- the HF model is built from the benchmark configuration, every parameter is redrawn as in
  tests/reference.py (untied lm_head), dropout is set to 0 (ours has none), and it is saved with
  `save_pretrained`; ours is `ib_jax.load_pretrained` of that directory.
- threads: the process is pinned to N cores (`os.sched_setaffinity`), torch runs
  `torch.set_num_threads(N)`, and XLA gets `--xla_cpu_multi_thread_eigen=<N > 1>
  intra_op_parallelism_threads=N` in XLA_FLAGS before its CPU client starts (XLA's intra-op pool
  is sized from the affinity mask, so pinning is what actually bounds it).
- every timing is the median of `--repeats` runs after `--warmup` runs, the two sides timed in
  alternation (ref, ours, ref, ...) so that both see the same background load; jax results are
  blocked on.

Rows: training step (frozen ViT and LM, AdamW on the Q-Former, query tokens, projection and
ln_vision on both sides), forward with loss, greedy and 5-beam generation of exactly 20 new tokens
(min_new_tokens = max_new_tokens), MFU against a measured XLA fp32 matmul peak, compiled vs
analytic FLOPs, input-pipeline throughput, compile time vs depth with and without scan, and the
compiled step's memory with and without remat.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    vision_width: int = 256
    vision_layers: int = 4
    image_size: int = 224
    patch_size: int = 14
    qformer_width: int = 256
    qformer_layers: int = 4
    cross_attention_frequency: int = 2
    num_query_tokens: int = 32
    qformer_vocab: int = 30523
    t5_width: int = 256
    t5_layers: int = 4  # encoder layers = decoder layers
    t5_heads: int = 4
    t5_d_kv: int = 64
    t5_d_ff: int = 1024
    vocab_size: int = 32128
    batch: int = 8
    instruction_len: int = 24  # LM instruction tokens and Q-Former instruction tokens
    target_len: int = 12
    new_tokens: int = 20
    num_beams: int = 5
    warmup: int = 2
    repeats: int = 7
    matmul_size: int = 2048
    compile_layers: tuple[int, ...] = (
        12,
        48,
    )  # total LM layers (half encoder, half decoder), tiny widths
    compile_width: int = 32
    compile_scan: tuple[bool, ...] = (False, True)
    memory_remat: tuple[str, ...] = ("none", "dots_no_batch", "full")
    pipeline_images: int = 64
    pipeline_batches: int = 10

    @property
    def heads(self) -> int:
        return max(1, self.vision_width // 64)


def tiny() -> BenchConfig:
    """Small enough that the whole suite runs in well under a minute (tests)."""
    return BenchConfig(
        vision_width=32,
        vision_layers=1,
        image_size=56,
        qformer_width=32,
        qformer_layers=2,
        num_query_tokens=4,
        qformer_vocab=128,
        t5_width=32,
        t5_layers=1,
        t5_heads=4,
        t5_d_kv=8,
        t5_d_ff=64,
        vocab_size=256,
        batch=2,
        instruction_len=6,
        target_len=4,
        new_tokens=4,
        num_beams=2,
        warmup=1,
        repeats=2,
        matmul_size=128,
        compile_layers=(2, 4),
        compile_width=16,
        memory_remat=("none", "full"),
        pipeline_images=8,
        pipeline_batches=2,
    )


# ---------------------------------------------------------------------------------------------
# Threads
# ---------------------------------------------------------------------------------------------


def pin_threads(threads: int) -> int:
    """Pin this process to `threads` cores and set XLA's flags; call before jax's backend starts."""
    cores = sorted(os.sched_getaffinity(0))
    threads = min(threads or len(cores), len(cores))
    os.sched_setaffinity(0, cores[:threads])
    flags = os.environ.get("XLA_FLAGS", "")
    flags += f" --xla_cpu_multi_thread_eigen={'true' if threads > 1 else 'false'}"
    flags += f" intra_op_parallelism_threads={threads}"
    os.environ["XLA_FLAGS"] = flags.strip()
    import torch

    torch.set_num_threads(threads)
    return threads


# ---------------------------------------------------------------------------------------------
# The shared model and batch
# ---------------------------------------------------------------------------------------------


def image_token(bc: BenchConfig) -> int:
    return bc.vocab_size - 1


def hf_config(bc: BenchConfig):
    from transformers import InstructBlipConfig

    vision = dict(
        hidden_size=bc.vision_width,
        intermediate_size=4 * bc.vision_width,
        num_hidden_layers=bc.vision_layers,
        num_attention_heads=bc.heads,
        image_size=bc.image_size,
        patch_size=bc.patch_size,
        attention_dropout=0.0,
    )
    qformer = dict(
        vocab_size=bc.qformer_vocab,
        hidden_size=bc.qformer_width,
        intermediate_size=4 * bc.qformer_width,
        num_hidden_layers=bc.qformer_layers,
        num_attention_heads=max(1, bc.qformer_width // 64),
        max_position_embeddings=512,
        cross_attention_frequency=bc.cross_attention_frequency,
        encoder_hidden_size=bc.vision_width,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    text = dict(
        model_type="t5",
        vocab_size=bc.vocab_size,
        d_model=bc.t5_width,
        d_kv=bc.t5_d_kv,
        d_ff=bc.t5_d_ff,
        num_layers=bc.t5_layers,
        num_decoder_layers=bc.t5_layers,
        num_heads=bc.t5_heads,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        dropout_rate=0.0,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    return InstructBlipConfig(
        vision_config=vision,
        qformer_config=qformer,
        text_config=text,
        num_query_tokens=bc.num_query_tokens,
        image_token_index=image_token(bc),
    )


def build_reference(bc: BenchConfig, seed: int = 0):
    """The HF model, every parameter redrawn as in tests/reference.py (untied head)."""
    import torch
    from transformers import InstructBlipForConditionalGeneration

    from tests import reference

    torch.manual_seed(seed)
    model = InstructBlipForConditionalGeneration(hf_config(bc))
    return reference.randomize_(model, seed)


def make_batch(bc: BenchConfig, seed: int = 1) -> dict[str, np.ndarray]:
    """Our batch (no image placeholders); the second half of the examples is padded everywhere."""
    rng = np.random.default_rng(seed)
    b, li, lt = bc.batch, bc.instruction_len, bc.target_len
    qformer_ids = rng.integers(1, bc.qformer_vocab, (b, li)).astype(np.int32)
    qformer_mask = np.ones((b, li), np.int32)
    input_ids = rng.integers(3, image_token(bc), (b, li)).astype(np.int32)
    mask = np.ones((b, li), np.int32)
    labels = rng.integers(3, image_token(bc), (b, lt)).astype(np.int32)
    for row in range(b // 2, b):
        qformer_ids[row, -li // 4 :], qformer_mask[row, -li // 4 :] = 0, 0
        input_ids[row, -li // 3 :], mask[row, -li // 3 :] = 0, 0
        labels[row, -lt // 4 :] = -100
    return {
        "pixel_values": rng.normal(size=(b, bc.image_size, bc.image_size, 3)).astype(np.float32),
        "qformer_input_ids": qformer_ids,
        "qformer_attention_mask": qformer_mask,
        "input_ids": input_ids,
        "attention_mask": mask,
        "labels": labels,
    }


def to_hf(bc: BenchConfig, batch: dict[str, np.ndarray], labels: bool = True) -> dict[str, Any]:
    """Our batch -> HF kwargs: NCHW pixels, num_query_tokens `<image>` placeholders in front."""
    import torch

    b = batch["input_ids"].shape[0]
    placeholders = np.full((b, bc.num_query_tokens), image_token(bc), np.int64)
    out = {
        "pixel_values": torch.from_numpy(batch["pixel_values"].transpose(0, 3, 1, 2).copy()),
        "qformer_input_ids": torch.from_numpy(batch["qformer_input_ids"].astype(np.int64)),
        "qformer_attention_mask": torch.from_numpy(
            batch["qformer_attention_mask"].astype(np.int64)
        ),
        "input_ids": torch.from_numpy(np.concatenate([placeholders, batch["input_ids"]], 1)),
        "attention_mask": torch.from_numpy(
            np.concatenate([np.ones_like(placeholders), batch["attention_mask"]], 1).astype(
                np.int64
            )
        ),
    }
    if labels:
        out["labels"] = torch.from_numpy(batch["labels"].astype(np.int64))
    return out


def train_config(bc: BenchConfig, model_config, *, scan: bool = False, remat: str = "none"):
    """An ml_collections training config for `build_program` (one device, fp32 everywhere)."""
    import ml_collections

    from configs import common
    from ib_jax.models.configs import to_config_dict

    config = ml_collections.ConfigDict()
    config.model = to_config_dict(
        dataclasses.replace(
            model_config,
            scan_layers=scan,
            remat_policy=remat,
            dtype="float32",
            param_dtype="float32",
        )
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
    config.mesh = common.mesh(data=1)
    config.train = common.train(
        frozen_dtype="float32", warmup_steps=10, num_steps=1000, learning_rate=1e-5
    )
    config.init = ml_collections.ConfigDict(dict(pretrained=""))
    return config


def one_device_program(config):
    import jax

    from ib_jax import sharding
    from ib_jax.train import trainer

    mesh, rules = (
        sharding.make_mesh(config.mesh, jax.devices()[:1]),
        sharding.axis_rules(config.mesh),
    )
    with sharding.activate(mesh, rules):
        return trainer.build_program(config, mesh, rules), mesh, rules


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------


def timed(fn: Callable[[], Any], warmup: int, repeats: int) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "runs": repeats,
    }


def load_snapshot() -> str:
    """The load average and the busiest other processes, as seen now."""
    load = os.getloadavg()
    try:
        import subprocess

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
    except Exception:  # noqa: BLE001 - informational only
        top = []
    return f"loadavg {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}; busiest others: {top}"


# ---------------------------------------------------------------------------------------------
# The reference (PyTorch)
# ---------------------------------------------------------------------------------------------

MEASURED = ("train_step", "forward", "greedy", "beam", "first_token")


def prepare_reference(
    bc: BenchConfig, hf_model, batch
) -> tuple[dict[str, Callable[[], Any]], dict[str, Any]]:
    """The reference's measured calls (name -> fn) and facts about them."""
    import torch

    info: dict[str, Any] = {
        "attn_implementation": getattr(hf_model.config, "_attn_implementation", None)
    }
    inputs = to_hf(bc, batch)
    gen_inputs = to_hf(bc, batch, labels=False)
    fns: dict[str, Callable[[], Any]] = {}

    def forward():
        hf_model.eval()
        with torch.no_grad():
            return hf_model(**inputs)

    fns["forward"] = forward
    info["forward_loss"] = float(forward().loss)

    for name, beams, new in (
        ("greedy", 1, bc.new_tokens),
        ("beam", bc.num_beams, bc.new_tokens),
        ("first_token", 1, 1),
    ):

        def generate(beams=beams, new=new):
            hf_model.eval()
            with torch.no_grad():
                return hf_model.generate(
                    **gen_inputs,
                    max_new_tokens=new,
                    min_new_tokens=new,
                    num_beams=beams,
                    do_sample=False,
                )

        fns[name] = generate

    # Training: frozen ViT (its post_layernorm, LAVIS's ln_vision, trains as in ours) and frozen LM.
    for p in hf_model.vision_model.parameters():
        p.requires_grad_(False)
    for p in hf_model.vision_model.post_layernorm.parameters():
        p.requires_grad_(True)
    for p in hf_model.language_model.parameters():
        p.requires_grad_(False)
    trainable = [p for p in hf_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5, betas=(0.9, 0.999), weight_decay=0.05)

    def train_step():
        hf_model.train()
        optimizer.zero_grad(set_to_none=True)
        loss = hf_model(**inputs).loss
        loss.backward()
        optimizer.step()
        return loss

    fns["train_step"] = train_step
    info["trainable_params"] = sum(p.numel() for p in trainable)
    return fns, info


def prepare_ours(
    bc: BenchConfig, model, params, batch
) -> tuple[dict[str, Callable[[], Any]], dict[str, Any]]:
    """Our measured calls (name -> fn, compiled here) and facts about them."""
    import jax
    import jax.numpy as jnp

    import ib_jax
    from ib_jax import sharding
    from ib_jax.train import flops
    from ib_jax.train.state import TrainState, split_params

    info: dict[str, Any] = {}
    fns: dict[str, Callable[[], Any]] = {}
    device_batch = {k: jnp.asarray(v) for k, v in batch.items()}
    params = jax.device_put(params)

    forward = jax.jit(
        lambda p, b: (lambda out: (out.logits, out.loss))(model.apply({"params": p}, **b))
    )
    fns["forward"] = lambda: jax.block_until_ready(forward(params, device_batch))
    info["forward_loss"] = float(forward(params, device_batch)[1])

    gen_batch = {k: v for k, v in device_batch.items() if k != "labels"}
    for name, beams, new in (
        ("greedy", 1, bc.new_tokens),
        ("beam", bc.num_beams, bc.new_tokens),
        ("first_token", 1, 1),
    ):

        def generate(beams=beams, new=new):
            return jax.block_until_ready(
                ib_jax.generate(
                    model,
                    params,
                    gen_batch,
                    max_new_tokens=new,
                    min_new_tokens=new,
                    num_beams=beams,
                )
            )

        start = time.perf_counter()
        generate()
        info[f"{name}_compile_s"] = time.perf_counter() - start
        fns[name] = generate

    # Training step: the trainer's program (jitted step from ib_jax/train/step.py, default trainable set).
    config = train_config(bc, model.config)
    program, mesh, rules = one_device_program(config)
    with sharding.activate(mesh, rules):
        trainable, frozen = split_params(params, config.train.trainable)
        shardings_of = lambda tree: jax.tree_util.tree_map(lambda x: x.sharding, tree)  # noqa: E731
        trainable = jax.device_put(trainable, shardings_of(program.abstract_state.trainable))
        # The step donates its state: copy, so that `params` (forward, generate) stays alive.
        trainable = jax.tree_util.tree_map(lambda x: jnp.array(x, copy=True), trainable)
        frozen = jax.device_put(frozen, shardings_of(program.abstract_frozen))
        opt_state = jax.jit(
            program.optimizer.init, out_shardings=shardings_of(program.abstract_state.opt_state)
        )(trainable)
        state = TrainState(step=jnp.zeros((), jnp.int32), trainable=trainable, opt_state=opt_state)
        step_batch = sharding.global_batch(batch, mesh)
        start = time.perf_counter()
        compiled = program.step_fn.lower(
            program.abstract_state, program.abstract_frozen, program.abstract_batch
        ).compile()
        info["train_compile_s"] = time.perf_counter() - start
    holder = {"state": state}

    def train_step():
        holder["state"], metrics = compiled(holder["state"], frozen, step_batch)
        return jax.block_until_ready(metrics)

    fns["train_step"] = train_step
    info["train_first_loss"] = float(train_step()["loss"])
    info["trainable_params"] = int(sum(x.size for x in jax.tree_util.tree_leaves(trainable)))
    info["compiled_flops"] = _cost(compiled).get("flops")
    info["memory"] = {"none (headline)": _memory(compiled)}
    shapes = flops.Shapes(
        bc.batch, bc.image_size, bc.instruction_len, bc.instruction_len, bc.target_len
    )
    info["analytic_train_flops"] = flops.train_step_flops(model.config, shapes)
    info["analytic_forward_flops"] = flops.forward_flops(model.config, shapes)
    return fns, info


def paired(
    ref_fns: dict, our_fns: dict, warmup: int, repeats: int, log: Callable[[str], None]
) -> tuple[dict, dict]:
    """Time each measurement on both sides in alternation (ref, ours, ref, ours, ...), so that both
    see the same background load; medians of `repeats` after `warmup` runs of each."""
    ref_times: dict[str, list] = {}
    our_times: dict[str, list] = {}
    for name in MEASURED:
        for _ in range(warmup):
            ref_fns[name]()
            our_fns[name]()
        ref_times[name], our_times[name] = [], []
        for _ in range(repeats):
            for fn, times in ((ref_fns[name], ref_times[name]), (our_fns[name], our_times[name])):
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
        log(
            f"  {name}: reference {statistics.median(ref_times[name]):.3f} s, "
            f"ours {statistics.median(our_times[name]):.3f} s"
        )

    def summary(ts):
        return {
            "median_s": statistics.median(ts),
            "min_s": min(ts),
            "max_s": max(ts),
            "runs": len(ts),
            "all_s": [round(t, 4) for t in ts],
        }

    return (
        {k: summary(v) for k, v in ref_times.items()},
        {k: summary(v) for k, v in our_times.items()},
    )


def _cost(compiled) -> dict[str, float]:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return dict(cost or {})


def _memory(compiled) -> dict[str, int]:
    m = compiled.memory_analysis()
    if m is None:
        return {}
    fields = (
        "argument_size_in_bytes",
        "output_size_in_bytes",
        "alias_size_in_bytes",
        "temp_size_in_bytes",
    )
    out = {f: int(getattr(m, f, 0) or 0) for f in fields}
    out["peak_bytes"] = (
        out["argument_size_in_bytes"]
        + out["output_size_in_bytes"]
        - out["alias_size_in_bytes"]
        + out["temp_size_in_bytes"]
    )
    return out


def matmul_peak(bc: BenchConfig) -> dict[str, float]:
    """fp32 FLOP/s of a large jitted jnp.dot (XLA) and torch.mm, same threads."""
    import jax
    import jax.numpy as jnp
    import torch

    n = bc.matmul_size
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    dot = jax.jit(jnp.dot)
    dot(a, b).block_until_ready()
    xla = timed(lambda: dot(a, b).block_until_ready(), 2, max(5, bc.repeats))
    ta, tb = torch.randn(n, n), torch.randn(n, n)
    tor = timed(lambda: torch.mm(ta, tb), 2, max(5, bc.repeats))
    flop = 2.0 * n**3
    return {
        "size": n,
        "xla_flops_per_s": flop / xla["median_s"],
        "xla_best_flops_per_s": flop / xla["min_s"],
        "torch_flops_per_s": flop / tor["median_s"],
        "torch_best_flops_per_s": flop / tor["min_s"],
    }


def memory_by_remat(bc: BenchConfig, model_config, headline: dict) -> dict[str, dict]:
    out = {}
    for remat in bc.memory_remat:
        if remat == "none":
            out["none"] = headline
            continue
        program, _, _ = one_device_program(train_config(bc, model_config, remat=remat))
        compiled = program.step_fn.lower(
            program.abstract_state, program.abstract_frozen, program.abstract_batch
        ).compile()
        out[remat] = _memory(compiled) | {"flops": _cost(compiled).get("flops")}
    return out


def compile_times(bc: BenchConfig) -> dict[str, float]:
    """Seconds to trace + lower + compile the training step, tiny widths, by LM depth and scan."""
    from ib_jax.models.configs import ModelConfig, QFormerConfig, T5Config, VisionConfig

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


def input_pipeline(bc: BenchConfig) -> dict[str, Any]:
    """Examples/s of the real training pipeline at 224 px from JPEGs, no worker processes (one core)."""
    from benchmarks import input_pipeline as ip

    with tempfile.TemporaryDirectory() as root:
        ann = ip.write_jpegs(root, bc.pipeline_images)
        return ip.measure(root, ann, workers=0, batch_size=bc.batch, batches=bc.pipeline_batches)


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def _fmt_s(x: float) -> str:
    return f"{x * 1e3:.0f} ms" if x < 1 else f"{x:.2f} s"


def _mib(x: int) -> str:
    return f"{x / 2**20:.1f} MiB"


def table(res: dict[str, Any]) -> str:
    ref, ours = res["reference"], res["ours"]
    rows = [
        "| measurement | PyTorch reference | ib_jax | ratio (ref / ours) | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for key, label, target in (
        ("train_step", "training step (frozen ViT + LM)", 1.0),
        ("forward", "forward + loss", 1.0),
        ("greedy", f"generate, greedy, {res['config']['new_tokens']} tokens", 3.0),
        (
            "beam",
            f"generate, {res['config']['num_beams']} beams, {res['config']['new_tokens']} tokens",
            3.0,
        ),
    ):
        r, o = ref[key]["median_s"], ours[key]["median_s"]
        ratio = r / o
        rows.append(
            f"| {label} | {_fmt_s(r)} | {_fmt_s(o)} | {ratio:.2f}x | >= {target:.1f}x | "
            f"{'yes' if ratio >= target else 'NO'} |"
        )
    r, o = ref["first_token"]["median_s"], ours["first_token"]["median_s"]
    rows.append(
        f"| generate 1 token (encode + first step: the floor under every generation) | {_fmt_s(r)} | "
        f"{_fmt_s(o)} | {r / o:.2f}x | | |"
    )
    r, o = ref["greedy_per_step_s"], ours["greedy_per_step_s"]
    rows.append(
        f"| one greedy decode step ((n tokens - 1 token) / (n - 1)) | {r * 1e3:.1f} ms | {o * 1e3:.1f} ms | "
        f"{r / o:.2f}x | | |"
    )
    mfu = res["mfu"]
    rows.append(
        f"| MFU of the training step (analytic {ours['analytic_train_flops'] / 1e9:.1f} GFLOP, "
        f"XLA fp32 matmul peak {res['peak']['xla_best_flops_per_s'] / 1e9:.1f} GFLOP/s) | "
        f"{res['mfu_reference'] * 100:.1f}% (vs torch.mm peak {res['peak']['torch_best_flops_per_s'] / 1e9:.1f} "
        f"GFLOP/s) | {mfu * 100:.1f}% | | >= 40% | {'yes' if mfu >= 0.4 else 'NO'} |"
    )
    cf = ours.get("compiled_flops")
    if cf:
        dev = cf / ours["analytic_train_flops"] - 1
        rows.append(
            f"| compiled / analytic FLOPs of the step | | {cf / 1e9:.1f} / "
            f"{ours['analytic_train_flops'] / 1e9:.1f} GFLOP ({dev * 100:+.1f}%) | | within 10% | "
            f"{'yes' if abs(dev) <= 0.10 else 'NO'} |"
        )
    ip = res.get("input_pipeline")
    if ip:
        need = res["config"]["batch"] / ours["train_step"]["median_s"]
        rows.append(
            f"| input pipeline, 224 px JPEGs, 1 core (workers=0) | | {ip['examples_per_s']:.1f} ex/s "
            f"(step consumes {need:.1f} ex/s) | | keeps up | "
            f"{'yes' if ip['examples_per_s'] >= need else 'NO'} |"
        )
    rows.append(
        f"| generated tokens equal to the reference's (greedy / beam) | | "
        f"{res['tokens_match']['greedy'] * 100:.0f}% / {res['tokens_match']['beam'] * 100:.0f}% | | | |"
    )
    rows.append(
        f"| loss (forward) | {ref['forward_loss']:.5f} | {ours['forward_loss']:.5f} | | | |"
    )
    out = ["\n".join(rows)]
    if res.get("compile"):
        out.append(
            "| training-step compile, tiny widths, LM layers (half encoder, half decoder) | total s | "
            "trace + lower s | XLA compile s | StableHLO lines |\n|---|---|---|---|---|\n"
            + "\n".join(
                f"| {k} | {v['total_s']:.1f} | {v['trace_lower_s']:.1f} | {v['xla_compile_s']:.1f} | "
                f"{v['hlo_lines']} |"
                for k, v in res["compile"].items()
            )
        )
    if res.get("memory"):
        lines = [
            "| training-step memory (memory_analysis) | temp | arguments | outputs | peak (args + out - "
            "aliased + temp) |",
            "|---|---|---|---|---|",
        ]
        for k, m in res["memory"].items():
            if m:
                lines.append(
                    f"| remat={k} | {_mib(m['temp_size_in_bytes'])} | {_mib(m['argument_size_in_bytes'])}"
                    f" | {_mib(m['output_size_in_bytes'])} | {_mib(m['peak_bytes'])} |"
                )
        out.append("\n".join(lines))
    out.append(
        f"threads: {res['threads']}; reference attention: {ref['attn_implementation']}; "
        f"load before: {res['load_before']}; load after: {res['load_after']}"
    )
    return "\n\n".join(out)


def run(
    bc: BenchConfig,
    threads: int = 0,
    *,
    sections: tuple[str, ...] = ("compile", "memory", "pipeline"),
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
) -> dict[str, Any]:
    """Everything; returns the raw results (call `table` on them). Threads must be pinned already."""
    import torch

    import ib_jax

    res: dict[str, Any] = {
        "config": dataclasses.asdict(bc),
        "threads": threads or torch.get_num_threads(),
        "load_before": load_snapshot(),
        "section_s": {},
    }
    clock = {"name": "setup", "start": time.perf_counter()}

    def log_section(name: str) -> None:
        now = time.perf_counter()
        res["section_s"][clock["name"]] = round(now - clock["start"], 1)
        clock.update(name=name, start=now)
        log(f"[{sum(res['section_s'].values()):.0f} s] {name}")

    with tempfile.TemporaryDirectory() as directory:
        log("building the reference and converting it")
        hf_model = build_reference(bc)
        hf_model.save_pretrained(directory)
        model, params = ib_jax.load_pretrained(directory)
    batch = make_batch(bc)
    log_section("measuring the matmul peak")
    res["peak"] = matmul_peak(bc)
    log_section("preparing (compiling) both sides")
    ref_fns, res["reference"] = prepare_reference(bc, hf_model, batch)
    our_fns, res["ours"] = prepare_ours(bc, model, params, batch)
    ref_tokens = {
        k: np.asarray(ref_fns[k]().numpy())[:, 1:] for k in ("greedy", "beam")
    }  # drop the start token
    our_tokens = {k: np.asarray(our_fns[k]()) for k in ("greedy", "beam")}
    log_section("timing both sides in alternation")
    ref_times, our_times = paired(ref_fns, our_fns, bc.warmup, bc.repeats, log)
    res["reference"].update(ref_times)
    res["ours"].update(our_times)
    res["tokens_match"] = {k: float(np.mean(ref_tokens[k] == our_tokens[k])) for k in ref_tokens}
    for side in (
        "reference",
        "ours",
    ):  # (greedy - first token) / (n - 1): one decode step, encode excluded
        r = res[side]
        r["greedy_per_step_s"] = (r["greedy"]["median_s"] - r["first_token"]["median_s"]) / max(
            1, bc.new_tokens - 1
        )
    step = res["ours"]["train_step"]["median_s"]
    # The peak is the best of its runs (a peak; the median under load would flatter the MFU).
    res["mfu"] = res["ours"]["analytic_train_flops"] / step / res["peak"]["xla_best_flops_per_s"]
    res["mfu_reference"] = (
        res["ours"]["analytic_train_flops"]
        / res["reference"]["train_step"]["median_s"]
        / res["peak"]["torch_best_flops_per_s"]
    )
    if "memory" in sections:
        log_section("compiling the step with remat policies")
        res["memory"] = memory_by_remat(bc, model.config, res["ours"]["memory"]["none (headline)"])
    if "compile" in sections:
        log_section("compile time vs depth")
        res["compile"] = compile_times(bc)
    if "pipeline" in sections:
        log_section("input pipeline")
        res["input_pipeline"] = input_pipeline(bc)
    log_section("done")
    res["load_after"] = load_snapshot()
    return res


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (seconds; for tests)")
    parser.add_argument(
        "--threads", type=int, default=0, help="cores for both frameworks (0: all available)"
    )
    parser.add_argument(
        "--repeats", type=int, default=0, help="timed runs per measurement (0: config default)"
    )
    parser.add_argument(
        "--skip", default="", help="comma-separated sections to skip: compile,memory,pipeline"
    )
    parser.add_argument("--json", default="", help="also write the raw results here")
    parser.add_argument("--markdown", default="", help="also write the table here")
    args = parser.parse_args(argv)
    threads = pin_threads(args.threads)
    bc = tiny() if args.tiny else BenchConfig()
    if args.repeats:
        bc = dataclasses.replace(bc, repeats=args.repeats)
    sections = tuple(s for s in ("compile", "memory", "pipeline") if s not in args.skip.split(","))
    res = run(bc, threads, sections=sections)
    text = table(res)
    print(text, flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1, default=str)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text + "\n")
    return res


if __name__ == "__main__":
    main()
