"""What both benchmarks share: the synthetic batch, candidate labels, timing and agreement.

Both sides of a comparison get the same numpy arrays from these functions (same seed), so a
difference between them is a difference between the implementations, not between their inputs.
"""

from __future__ import annotations

import math
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

IGNORE_INDEX = -100  # labels the loss skips (torch's cross-entropy default, ours too)


def make_batch(
    batch: int,
    image_size: int,
    qformer_len: int,
    text_len: int,
    target_len: int,
    *,
    qformer_vocab: int,
    max_token: int,
    pad_instructions: bool = True,
    num_frames: int = 1,
    seed: int = 1,
) -> dict[str, np.ndarray]:
    """A training batch in our layout (docs/CONTRACTS.md; no image placeholders).

    Token ids are drawn from [3, max_token) so that they never hit pad (0), EOS (1/2) or the
    reference's `<image>` id. When `pad_instructions`, the second half of the rows is padded at
    the end of every sequence (Q-Former instruction, LM instruction, target), so both sides run
    their masking code; decoder-only models get unpadded instructions (HF's `generate` needs left
    padding there, ours takes either side, and the timing does not depend on it).

    Returns pixel_values [B, H, W, 3] (or [B, F, H, W, 3]) float32, qformer_input_ids /
    qformer_attention_mask [B, Lq], input_ids / attention_mask [B, Li], labels [B, Lt] int32.
    """
    rng = np.random.default_rng(seed)
    qformer_ids = rng.integers(1, qformer_vocab, (batch, qformer_len)).astype(np.int32)
    qformer_mask = np.ones((batch, qformer_len), np.int32)
    input_ids = rng.integers(3, max_token, (batch, text_len)).astype(np.int32)
    mask = np.ones((batch, text_len), np.int32)
    labels = rng.integers(3, max_token, (batch, target_len)).astype(np.int32)
    for row in range(batch // 2, batch):
        labels[row, -max(1, target_len // 4) :] = IGNORE_INDEX
        if pad_instructions:
            qformer_ids[row, -max(1, qformer_len // 4) :] = 0
            qformer_mask[row, -max(1, qformer_len // 4) :] = 0
            input_ids[row, -max(1, text_len // 3) :] = 0
            mask[row, -max(1, text_len // 3) :] = 0
    frames = (num_frames,) if num_frames > 1 else ()
    pixels = rng.normal(size=(batch, *frames, image_size, image_size, 3)).astype(np.float32)
    return {
        "pixel_values": pixels,
        "qformer_input_ids": qformer_ids,
        "qformer_attention_mask": qformer_mask,
        "input_ids": input_ids,
        "attention_mask": mask,
        "labels": labels,
    }


def make_candidates(
    batch: int, num_candidates: int, length: int, *, max_token: int, eos: int, seed: int = 2
) -> np.ndarray:
    """Candidate answers for ranking, [B, C, L] int32: random ids then EOS, -100 after it.

    Lengths vary from 1 token + EOS to the full `length`, as answer options do."""
    rng = np.random.default_rng(seed)
    out = np.full((batch, num_candidates, length), IGNORE_INDEX, np.int32)
    for b in range(batch):
        for c in range(num_candidates):
            n = int(rng.integers(1, length))  # tokens before the EOS
            out[b, c, :n] = rng.integers(3, max_token, n)
            out[b, c, n] = eos
    return out


def timed_calls(
    fn: Callable[[], Any], *, warmup: int, calls: int, budget_s: float
) -> dict[str, float]:
    """Call `fn` `warmup` times, then up to `calls` times or until `budget_s` has passed (at least
    once). `fn` must block until its result exists. Returns seconds: first warm-up call (compile
    included), median / min of the timed calls, and their count."""
    first = None
    for _ in range(warmup):
        start = time.perf_counter()
        fn()
        first = first if first is not None else time.perf_counter() - start
    times: list[float] = []
    began = time.perf_counter()
    while len(times) < max(1, calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        if time.perf_counter() - began >= budget_s:
            break
    return {
        "first_call_s": first if first is not None else times[0],
        "median_s": statistics.median(times),
        "min_s": min(times),
        "calls": len(times),
    }


def relative_difference(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-30)


def fraction_equal(a: np.ndarray, b: np.ndarray) -> float:
    """Share of equal entries of two token arrays (shapes must match)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"token arrays differ in shape: {a.shape} vs {b.shape}")
    return float(np.mean(a == b)) if a.size else 1.0


def is_positive_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def versions() -> dict[str, str]:
    """Library versions and the host, for the results file."""
    out = {"python": platform.python_version(), "host": platform.node()}
    for name in ("jax", "jaxlib", "flax", "torch", "transformers", "numpy"):
        try:
            module = __import__(name)
            out[name] = getattr(module, "__version__", "?")
        except ImportError:
            out[name] = "not installed"
    return out


def compiled_flops(compiled) -> float | None:
    """XLA's FLOP count of a compiled (or lowered) computation; None where XLA gives none.
    A scanned layer stack is counted once, not once per layer."""
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    flops = dict(cost or {}).get("flops")
    return float(flops) if flops else None


def compiled_memory(compiled) -> dict[str, int]:
    """XLA's memory analysis of a compiled computation, bytes; `peak_bytes` counts donated
    (aliased) buffers once: arguments + outputs - aliased + temporaries."""
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


def xla_matmul_peak(size: int, calls: int = 5) -> float:
    """FLOP/s of the best of `calls` jitted fp32 `size` x `size` matmuls: the peak MFU is taken
    against where no published one exists (CPUs)."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
    dot = jax.jit(jnp.dot)
    times = timed_calls(lambda: dot(a, b).block_until_ready(), warmup=2, calls=calls, budget_s=30)
    return 2.0 * size**3 / times["min_s"]
