"""The LoRA training step side by side (benchmarks.run's `lora` section): HF InstructBLIP + peft
against ib_jax, same weights, batch, targets, rank and alpha.

Both sides adapt the LM's self- and cross-attention q/v and the Q-Former's self- and
cross-attention query/value with rank-8 pairs (alpha 16) and train those alone with AdamW
(lr 1e-5, wd 0.05); everything else is frozen. B starts at zero on both sides, so their first
losses are the base model's and must agree.
"""

from __future__ import annotations

import copy
import dataclasses
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from benchmarks import reference, run_sections
from ib_jax import sharding
from ib_jax.contract.model import LoraConfig
from ib_jax.train.state import TrainState, complete_lora, split_params

RANK, ALPHA = 8, 16.0
HF_TARGETS = ["q", "v", "query", "value"]  # peft: module names (T5 q/v, Q-Former query/value)
TARGETS = (r"^language_model/.*attention/(q|v)$", r"^qformer/.*attention/(query|value)$")


def _reference_step(hf_model, inputs) -> tuple[Callable[[], Any], int]:
    """(one peft training step, its trainable parameter count) on a copy of `hf_model`."""
    import torch
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    peft_model = get_peft_model(
        copy.deepcopy(hf_model),
        PeftLoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=HF_TARGETS, lora_dropout=0.0),
    )
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5, betas=(0.9, 0.999), weight_decay=0.05)

    def step():
        peft_model.train()
        optimizer.zero_grad(set_to_none=True)
        loss = peft_model(**inputs).loss
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step, sum(p.numel() for p in trainable)


def _our_step(bc, model_config, params, batch) -> tuple[Callable[[], Any], int]:
    """(one step of the trainer's program with LoRA, its trainable parameter count)."""
    lora = LoraConfig(rank=RANK, alpha=ALPHA, targets=TARGETS)
    config = run_sections.train_config(bc, dataclasses.replace(model_config, lora=lora))
    config.train.trainable = ""  # LoRA alone
    program, mesh, rules = run_sections.one_device_program(config)
    with sharding.activate(mesh, rules):
        params = complete_lora(params, program.init, jax.random.key(0))
        trainable, frozen = split_params(params, config.train.trainable)
        shardings_of = lambda tree: jax.tree_util.tree_map(lambda x: x.sharding, tree)  # noqa: E731
        trainable = jax.device_put(trainable, shardings_of(program.abstract_state.trainable))
        trainable = jax.tree_util.tree_map(lambda x: jnp.array(x, copy=True), trainable)
        frozen = jax.device_put(frozen, shardings_of(program.abstract_frozen))
        opt_state = jax.jit(
            program.optimizer.init, out_shardings=shardings_of(program.abstract_state.opt_state)
        )(trainable)
        state = TrainState(step=jnp.zeros((), jnp.int32), trainable=trainable, opt_state=opt_state)
        step_batch = sharding.global_batch(batch, mesh)
        compiled = program.step_fn.lower(
            program.abstract_state, program.abstract_frozen, program.abstract_batch
        ).compile()
    holder = {"state": state}

    def step():
        holder["state"], metrics = compiled(holder["state"], frozen, step_batch)
        return jax.block_until_ready(metrics)["loss"]

    return step, int(sum(x.size for x in jax.tree_util.tree_leaves(trainable)))


def measure(bc, hf_model, model, params, batch, log: Callable[[str], None]) -> dict[str, Any]:
    """Median step times of both sides timed in alternation, trainable counts, first losses."""
    inputs = reference.to_hf(batch, model.config)
    ref_step, ref_count = _reference_step(hf_model, inputs)
    our_step, our_count = _our_step(bc, model.config, params, batch)
    first = {"reference": float(ref_step()), "ours": float(our_step())}
    for _ in range(bc.warmup):
        ref_step(), our_step()
    times: dict[str, list[float]] = {"reference": [], "ours": []}
    for _ in range(bc.repeats):
        for side, fn in (("reference", ref_step), ("ours", our_step)):
            start = time.perf_counter()
            fn()
            times[side].append(time.perf_counter() - start)
    out = {
        side: {
            "median_s": statistics.median(ts),
            "all_s": [round(t, 4) for t in ts],
            "first_loss": first[side],
            "trainable_params": count,
        }
        for (side, ts), count in zip(times.items(), (ref_count, our_count))
    }
    out.update(rank=RANK, alpha=ALPHA, hf_targets=HF_TARGETS, targets=list(TARGETS))
    log(
        f"  LoRA train_step: reference {out['reference']['median_s']:.3f} s, "
        f"ours {out['ours']['median_s']:.3f} s"
    )
    return out


def rows(res: dict[str, Any]) -> list[str]:
    """The LoRA rows of benchmarks.run's table (none when the section was skipped)."""
    lora = res.get("lora")
    if not lora:
        return []
    r, o = lora["reference"], lora["ours"]
    ratio = r["median_s"] / o["median_s"]
    loss_diff = abs(r["first_loss"] - o["first_loss"]) / abs(r["first_loss"])
    return [
        f"| LoRA training step (r={lora['rank']}, alpha={lora['alpha']:g}: LM and Q-Former "
        f"attention q/v; HF + peft vs ours) | {r['median_s'] * 1e3:.1f} ms | "
        f"{o['median_s'] * 1e3:.1f} ms | {ratio:.2f}x | >= 1.0x | {'yes' if ratio >= 1 else 'no'} |",
        f"| LoRA: trainable parameters equal, first losses (B = 0) agree | "
        f"{r['trainable_params']:,d} | {o['trainable_params']:,d} | | rel. diff {loss_diff:.1e} | "
        f"{'yes' if r['trainable_params'] == o['trainable_params'] and loss_diff <= 1e-5 else 'no'} |",
    ]
