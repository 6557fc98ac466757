"""benchmarks.accelerator, ib_jax's side: the training step, generation and ranking on one device.

Run as a subprocess of `python -m benchmarks.accelerator` (one process per side, so each side has
the whole device's memory); `measure` returns the JSON-ready results.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import ib_jax
from benchmarks import accelerator_common as ac
from benchmarks import common, reference
from ib_jax import sharding
from ib_jax.contract import precision
from ib_jax.contract.model import from_config_dict
from ib_jax.eval import ranking
from ib_jax.train import flops, trainer
from ib_jax.train.state import merge_params
from launch import aot


def device_memory() -> dict[str, int]:
    """`memory_stats()` of the first device (peak and limit), empty where the backend has none."""
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    return {k: int(stats[k]) for k in ("peak_bytes_in_use", "bytes_limit") if k in stats}


def _train(config, batch_size: int, steps: int, budget_s: float, profile_dir: str, log) -> dict:
    """Compile the trainer's step at `batch_size`, check it fits, time it. Raises on OOM."""
    import jax

    config.data.global_batch_size = batch_size
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
    rules = sharding.axis_rules(config.mesh)
    with sharding.activate(mesh, rules):
        program = trainer.build_program(config, mesh, rules)
        start = time.perf_counter()
        lowered = program.step_fn.lower(
            program.abstract_state, program.abstract_frozen, program.abstract_batch
        )
        compiled = lowered.compile()
        compile_s = time.perf_counter() - start
        estimate = common.compiled_memory(compiled)
        limit = device_memory().get("bytes_limit")
        if limit and estimate.get("peak_bytes", 0) > limit:
            # XLA:GPU compiles programs that cannot run; fail here rather than mid-step.
            raise MemoryError(
                f"RESOURCE_EXHAUSTED: the compiled step needs {estimate['peak_bytes']} bytes, "
                f"the device has {limit}"
            )
        state, frozen = trainer.initial_state(config, program)
        trainable_count = int(sum(x.size for x in jax.tree_util.tree_leaves(state.trainable)))
        # The step donates its state: generation and ranking get a copy of the trainable params.
        eval_params = merge_params(
            jax.tree_util.tree_map(lambda x: x.copy(), state.trainable), frozen
        )
        batch = sharding.global_batch(ac.train_batch(config, batch_size), mesh)
    holder = {"state": state}

    def step():
        holder["state"], metrics = compiled(holder["state"], frozen, batch)
        return jax.block_until_ready(metrics)

    first_loss = float(step()["loss"])  # at the initial parameters: compared with the reference
    times = common.timed_calls(step, warmup=1, calls=steps, budget_s=budget_s)
    if profile_dir:
        with jax.profiler.trace(profile_dir):
            for _ in range(3):
                step()
        log(f"profile of 3 training steps written to {profile_dir}")
    out = dict(
        batch_size=batch_size,
        compile_s=compile_s,
        step_time_s=times["median_s"],
        examples_per_s=batch_size / times["median_s"],
        timed_steps=times["calls"],
        first_loss=first_loss,
        trainable_parameters=trainable_count,
        compiled_memory=estimate,
        xla_flops=common.compiled_flops(compiled),
        scan_layers=bool(config.model.scan_layers),
    )
    return out | {"_program": program, "_compiled": compiled, "_params": eval_params}


def _timed(fn: Callable[[], Any], calls: int, budget_s: float, size: int) -> tuple[dict, Any]:
    """Time `fn` (one compiling call, then up to `calls` or `budget_s`); (times, last output)."""
    import jax

    holder = {}

    def call():
        holder["out"] = jax.block_until_ready(fn())

    times = common.timed_calls(call, warmup=1, calls=calls, budget_s=budget_s)
    return dict(batch_size=size, examples_per_s=size / times["median_s"], **times), np.asarray(
        holder["out"]
    )


def _generate(model, params, batch, settings: dict, calls: int, budget_s: float):
    """Beam search at `settings` over `batch`: (times, tokens [B, max_new_tokens])."""
    import jax.numpy as jnp

    batch = {k: jnp.asarray(v) for k, v in batch.items()}  # on the device once, as the reference
    return _timed(
        lambda: ib_jax.generate(
            model,
            params,
            batch,
            num_beams=settings["num_beams"],
            max_new_tokens=settings["max_new_tokens"],
            # Random weights: forcing the full length makes both sides decode the same steps.
            min_new_tokens=settings["max_new_tokens"],
            length_penalty=settings["length_penalty"],
        ),
        calls,
        budget_s,
        batch["input_ids"].shape[0],
    )


def _rank(model, params, batch, candidates, calls: int, budget_s: float):
    """Candidate scores at the RANKING settings: (times, scores [B, C])."""
    import jax.numpy as jnp

    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    candidates = jnp.asarray(candidates)
    return _timed(
        lambda: ranking.score_candidates(
            model, params, batch, candidates, chunk_size=ac.RANKING["chunk_size"]
        ),
        calls,
        budget_s,
        candidates.shape[0],
    )


def _planner(config, compiled) -> dict:
    """launch.aot's numbers for this config and batch (FLOPs per step; memory: the planner's
    accounting of this device's compiled step), to print beside the measured ones."""
    return dict(
        analytic_flops=aot.train_step_flops(config),
        memory_bytes=int(aot.memory_of(compiled)["total"]),
    )


def measure(
    model_name: str,
    *,
    batch_size: int,
    eval_batch_size: int,
    steps: int,
    calls: int,
    weights_dir: str,
    budgets: dict[str, float],
    total_s: float,
    profile_dir: str = "",
    log: Callable[[str], None] = print,
    save: Callable[[dict], None] = lambda results: None,
) -> dict[str, Any]:
    """Every measurement of our side (see benchmarks/accelerator.py for what and how); with
    `weights_dir` (fp32 models only) the reference's weights are written there and used here,
    and the outputs the agreement check needs are returned too."""
    import jax

    budget = ac.Budget(total_s)
    config = ac.load_config(model_name, batch_size)
    model_config = from_config_dict(config.model)
    if ac.is_fp32(config):
        # Both sides in full fp32 (XLA:GPU would otherwise use TF32 for fp32 matmuls).
        jax.config.update("jax_default_matmul_precision", "highest")
    if weights_dir:
        hf = reference.build(model_config, seed=0)
        hf.save_pretrained(weights_dir)
        config.init.pretrained = weights_dir
        log(f"shared weights written to {weights_dir}")
    device = jax.devices()[0]
    out: dict[str, Any] = dict(
        model=model_name,
        platform=device.platform,
        device_kind=device.device_kind,
        config=ac.CONFIGS[model_name],
        dtype=dict(
            compute=precision.resolve(config.model).compute, frozen=precision.frozen_dtype(config)
        ),
        lengths={k: int(config.data[k]) for k in aot.DEFAULT_LENGTHS},
        image_size=int(config.data.image_size),
        skipped=[],
    )
    log(f"training step: {model_name}, batch {config.data.global_batch_size}, {device.device_kind}")
    train = ac.largest_batch(
        int(config.data.global_batch_size),
        lambda b: _train(config, b, steps, budgets["train"], profile_dir, log),
        log,
    )
    program, params = train.pop("_program"), train.pop("_params")
    train["planner"] = _planner(config, train.pop("_compiled"))
    shapes = dataclasses.replace(flops.Shapes.from_config(config), batch=train["batch_size"])
    train["analytic_flops"] = flops.train_step_flops(model_config, shapes)
    peak = flops.device_peak_flops(device.device_kind, config.train.get("peak_flops_per_device", 0))
    if peak is None:  # CPUs publish no peak: measure XLA's own fp32 matmul rate
        peak, train["peak_source"] = common.xla_matmul_peak(1024), "measured XLA fp32 matmul"
    else:
        train["peak_source"] = "published dense bf16 peak (ib_jax/train/flops.py)"
    train["peak_flops_per_s"] = peak
    train["mfu"] = train["analytic_flops"] / train["step_time_s"] / peak
    memory = device_memory()
    if "peak_bytes_in_use" in memory:
        train["peak_memory_bytes"] = memory["peak_bytes_in_use"]
        train["memory_source"] = "device memory_stats() peak_bytes_in_use"
    else:
        train["peak_memory_bytes"] = train["compiled_memory"]["peak_bytes"]
        train["memory_source"] = "compiled memory_analysis() (no memory_stats on this backend)"
    out["num_parameters"] = int(sum(x.size for x in jax.tree_util.tree_leaves(params)))
    out["train"] = train
    budget.saw(train["compile_s"])  # the guess for the first generation compile
    save(out)
    log(f"  {train['examples_per_s']:.2f} examples/s, MFU {train['mfu']:.1%}")

    model = program.model
    eval_size = ac.eval_batch_size(config, eval_batch_size)
    outputs: dict[str, Any] = {"first_loss": train["first_loss"]}
    for name, settings in (("generate_qa", ac.QA), ("generate_captions", ac.CAPTIONS)):
        if not budget.allows(budgets[name]):
            out["skipped"].append(f"{name}: the time budget ran out")
            continue
        log(f"{name}: {settings}")
        result, tokens = ac.largest_batch(
            eval_size,
            lambda b, s=settings, t=budgets[name]: _generate(
                model, params, ac.eval_batch(config, b), s, calls, t
            ),
            log,
        )
        out[name], outputs[name] = result | settings, tokens.tolist()
        log(f"  {result['examples_per_s']:.2f} examples/s")
        budget.saw(result["first_call_s"])
        save(out)
    if not budget.allows(budgets["ranking"]):
        out["skipped"].append("ranking: the time budget ran out")
    else:
        log(f"ranking: {ac.RANKING}")
        result, scores = ac.largest_batch(
            eval_size,
            lambda b: _rank(
                model,
                params,
                ac.eval_batch(config, b),
                ac.candidates(config, b),
                calls,
                budgets["ranking"],
            ),
            log,
        )
        out["ranking"], outputs["ranking"] = result | ac.RANKING, scores.tolist()
        log(f"  {result['examples_per_s']:.2f} examples/s")
        budget.saw(result["first_call_s"])
        save(out)
    if weights_dir:
        out["agreement_outputs"] = outputs
    return out


__all__ = ["measure"]
