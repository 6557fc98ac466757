"""benchmarks.accelerator, the reference's side: HF transformers InstructBLIP in PyTorch.

The same measurements as benchmarks/accelerator_ours.py on the same device, batches and settings:
frozen ViT and LM stored in bf16 with bf16 autocast on accelerators (the trainable Q-Former,
query tokens, projection and ln_vision in fp32, `torch.optim.AdamW(fused=True)`), the training
forward under `torch.compile` on CUDA (falls back to eager, and says so, if compiling fails);
generation is HF's eager `generate` (its beam search is a Python loop over steps); ranking is
LAVIS's (encode once, teacher-force the candidates in chunks). fp32 models (the tiny one) run in
fp32 on the weights our side wrote, for the agreement check.
"""

from __future__ import annotations

import contextlib
import dataclasses
import resource
from collections.abc import Callable
from typing import Any

from benchmarks import accelerator_common as ac
from benchmarks import common, reference
from ib_jax.contract.model import from_config_dict
from ib_jax.train import flops


def device_for(platform: str) -> tuple[str | None, str]:
    """(torch device, why not) for the platform JAX ran on."""
    import torch

    if platform == "gpu":
        if torch.cuda.is_available():
            return "cuda", ""
        return None, "this torch has no CUDA (install a CUDA build of torch to compare)"
    if platform == "cpu":
        return "cpu", ""
    return None, f"no PyTorch reference on {platform} here (torch_xla is not set up)"


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _peak_memory(device: str) -> tuple[int, str]:
    import torch

    if device == "cuda":
        return int(torch.cuda.max_memory_allocated()), "torch.cuda.max_memory_allocated"
    # ru_maxrss is in KiB on Linux: the whole process, the Python runtime included.
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "process max RSS"


def _peak_flops(device: str, device_kind: str) -> tuple[float, str]:
    import torch

    peak = flops.device_peak_flops(device_kind)
    if peak:
        return peak, "published dense bf16 peak (ib_jax/train/flops.py)"
    a, b = torch.randn(1024, 1024, device=device), torch.randn(1024, 1024, device=device)
    times = common.timed_calls(
        lambda: (torch.mm(a, b), _sync(device)), warmup=2, calls=5, budget_s=30
    )
    return 2.0 * 1024**3 / times["min_s"], "measured torch.mm fp32"


def _train(model, config, hf_inputs, batch: int, steps: int, budget_s: float, ctx, state) -> dict:
    """One training step of the reference at `batch`: warm-up (compile), then timed. Raises on OOM."""
    import torch

    device = state["device"]
    inputs = hf_inputs(ac.train_batch(config, batch))
    with torch.no_grad(), ctx():
        first_loss = float(model(**inputs).loss)  # at the initial weights: the agreement check
    trainable = reference.trainable_parameters(model)
    initial = [p.detach().clone() for p in trainable]
    optimizer = torch.optim.AdamW(
        trainable, lr=1e-5, betas=(0.9, 0.999), weight_decay=0.05, fused=device == "cuda"
    )

    def step():
        model.train()
        optimizer.zero_grad(set_to_none=True)
        with ctx():
            loss = state["forward"](**inputs).loss
        loss.backward()
        optimizer.step()
        _sync(device)

    try:
        warm = common.timed_calls(step, warmup=1, calls=1, budget_s=0)
    except Exception as e:  # noqa: BLE001 - torch.compile failures: fall back to eager
        if ac.is_out_of_memory(e) or state["forward"] is model:
            raise
        state["forward"], state["compiled"] = model, f"eager (torch.compile failed: {e!r:.200})"
        warm = common.timed_calls(step, warmup=1, calls=1, budget_s=0)
    times = common.timed_calls(step, warmup=0, calls=steps, budget_s=budget_s)
    # Generation and ranking run on the initial weights, as ours (which keeps a copy) does.
    with torch.no_grad():
        for p, value in zip(trainable, initial):
            p.copy_(value)
    model.zero_grad(set_to_none=True)
    model.eval()
    return dict(
        batch_size=batch,
        first_call_s=warm["first_call_s"],
        step_time_s=times["median_s"],
        examples_per_s=batch / times["median_s"],
        timed_steps=times["calls"],
        first_loss=first_loss,
        trainable_parameters=sum(p.numel() for p in trainable),
        forward=state["compiled"],
    )


def measure(
    model_name: str,
    *,
    platform: str,
    device_kind: str,
    train_batch_size: int,
    eval_batch_size: int,
    steps: int,
    calls: int,
    weights_dir: str,
    budgets: dict[str, float],
    total_s: float,
    compile_forward: bool = True,
    log: Callable[[str], None] = print,
    save: Callable[[dict], None] = lambda results: None,
) -> dict[str, Any]:
    """Every measurement of the reference; {"available": False, "reason": ...} where it cannot run."""
    import torch

    device, why_not = device_for(platform)
    if device is None:
        return {"available": False, "reason": why_not}
    budget = ac.Budget(total_s)
    config = ac.load_config(model_name, train_batch_size)
    model_config = from_config_dict(config.model)
    fp32 = ac.is_fp32(config)
    if fp32 and device == "cuda":  # full fp32, as ours: no TF32 in matmuls or the patch conv
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    if weights_dir:
        from transformers import InstructBlipForConditionalGeneration

        model = InstructBlipForConditionalGeneration.from_pretrained(weights_dir).to(device).eval()
    else:
        model = reference.build(model_config, seed=0, device=device)
    if not fp32:
        reference.cast_frozen_towers_(model, torch.bfloat16)

    def ctx():
        if fp32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device, dtype=torch.bfloat16)

    def hf_inputs(batch, labels=True):
        return reference.to_hf(batch, model_config, labels=labels, device=device)

    state = {"device": device, "forward": model, "compiled": "eager"}
    if compile_forward and device == "cuda":
        state["forward"], state["compiled"] = torch.compile(model), "torch.compile"
    out: dict[str, Any] = dict(
        available=True,
        device=device,
        device_name=torch.cuda.get_device_name() if device == "cuda" else "cpu",
        precision="fp32" if fp32 else "bf16 frozen towers, bf16 autocast, fp32 trainable",
        attn_implementation=getattr(model.config, "_attn_implementation", None),
        skipped=[],
    )
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    log(f"reference training step: batch {train_batch_size}, {out['precision']}")
    train = ac.largest_batch(
        train_batch_size,
        lambda b: _oom_safe(
            device,
            lambda: _train(model, config, hf_inputs, b, steps, budgets["train"], ctx, state),
        ),
        log,
    )
    shapes = dataclasses.replace(flops.Shapes.from_config(config), batch=train["batch_size"])
    train["analytic_flops"] = flops.train_step_flops(model_config, shapes)
    train["peak_flops_per_s"], train["peak_source"] = _peak_flops(device, device_kind)
    train["mfu"] = train["analytic_flops"] / train["step_time_s"] / train["peak_flops_per_s"]
    train["peak_memory_bytes"], train["memory_source"] = _peak_memory(device)
    out["train"] = train
    budget.saw(train["step_time_s"])  # eager generation: no compile to expect
    save(out)
    log(f"  {train['examples_per_s']:.2f} examples/s ({train['forward']})")

    outputs: dict[str, Any] = {"first_loss": train["first_loss"]}
    for name, settings in (("generate_qa", ac.QA), ("generate_captions", ac.CAPTIONS)):
        if not budget.allows(budgets[name]):
            out["skipped"].append(f"{name}: the time budget ran out")
            continue
        log(f"reference {name}: {settings}")

        def generate(b, settings=settings, limit=budgets[name]):
            inputs = hf_inputs(ac.eval_batch(config, b), labels=False)
            holder = {}

            def call():
                with torch.no_grad(), ctx():
                    holder["out"] = model.generate(
                        **inputs,
                        num_beams=settings["num_beams"],
                        max_new_tokens=settings["max_new_tokens"],
                        min_new_tokens=settings["max_new_tokens"],
                        length_penalty=settings["length_penalty"],
                        do_sample=False,
                    )
                _sync(device)

            times = common.timed_calls(call, warmup=1, calls=calls, budget_s=limit)
            tokens = reference.new_tokens(model, holder["out"], inputs["input_ids"].shape[1])
            return dict(batch_size=b, examples_per_s=b / times["median_s"], **times), tokens

        result, tokens = ac.largest_batch(
            eval_batch_size, lambda b, g=generate: _oom_safe(device, lambda: g(b)), log
        )
        out[name], outputs[name] = result | settings, tokens.tolist()
        log(f"  {result['examples_per_s']:.2f} examples/s")
        budget.saw(result["first_call_s"])
        save(out)
    if not budget.allows(budgets["ranking"]):
        out["skipped"].append("ranking: the time budget ran out")
    else:
        log(f"reference ranking: {ac.RANKING}")

        def rank(b):
            inputs = hf_inputs(ac.eval_batch(config, b), labels=False)
            candidates = torch.from_numpy(ac.candidates(config, b)).long().to(device)
            holder = {}

            def call():
                with torch.no_grad(), ctx():
                    holder["scores"] = reference.score_candidates(
                        model, inputs, candidates, ac.RANKING["chunk_size"]
                    )
                _sync(device)

            times = common.timed_calls(call, warmup=1, calls=calls, budget_s=budgets["ranking"])
            scores = holder["scores"].float().cpu().numpy()
            return dict(batch_size=b, examples_per_s=b / times["median_s"], **times), scores

        result, scores = ac.largest_batch(
            eval_batch_size, lambda b: _oom_safe(device, lambda: rank(b)), log
        )
        out["ranking"], outputs["ranking"] = result | ac.RANKING, scores.tolist()
        log(f"  {result['examples_per_s']:.2f} examples/s")
        budget.saw(result["first_call_s"])
        save(out)
    if weights_dir:
        out["agreement_outputs"] = outputs
    return out


def _oom_safe(device: str, fn: Callable[[], Any]) -> Any:
    """Run `fn`; after an out-of-memory error, free torch's cached blocks before re-raising (the
    caller retries at half the batch)."""
    import torch

    try:
        return fn()
    except Exception as e:
        if device == "cuda" and ac.is_out_of_memory(e):
            torch.cuda.empty_cache()
        raise
