"""Candidate ranking ("vocabulary ranking" in the paper): score every candidate answer by its LM
likelihood.

score(candidate) = sum over the candidate's tokens (its `</s>` included where the LM's text format
ends candidates with it) of log p(token | image, instruction, previous tokens), or that sum
divided by the token count (`length_normalize=True`).

One jitted pass per batch: the image and instruction are encoded once per example (the LM's
`encode_prompt` context: T5's encoder output, Vicuna's soft prompt), repeated for the candidates,
and the LM runs teacher-forced (`target_logits`) over all candidates at once; `chunk_size` bounds
the [B * chunk, L, vocab] logits (Visual Dialog has 100 candidates per example) by scanning over
chunks of candidates.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ib_jax.contract.batch import IGNORE_INDEX, MODEL_INPUTS
from ib_jax.models.lm import Context
from ib_jax.models.losses import token_log_probs

Array = jax.Array


def _encode(module, inputs: dict[str, Array]) -> Context:
    """Inside `apply`: what the candidates share, computed once per example (the LM's Context)."""
    return module.encode_prompt(*(inputs.get(k) for k in MODEL_INPUTS))


def _candidate_logits(module, context: Context, labels: Array) -> Array:
    """Inside `apply`: labels [B, c, L] -> logits [B*c, L, V] with logits[:, j] predicting labels[:, j]."""
    batch, num_candidates, length = labels.shape
    flat = labels.reshape(batch * num_candidates, length)
    # Example-major, like `flat`.
    repeated = jax.tree_util.tree_map(lambda x: jnp.repeat(x, num_candidates, axis=0), context)
    return module.target_logits(repeated, flat)


def _score(
    model,
    length_normalize: bool,
    chunk_size: int,
    params: Any,
    inputs: dict[str, Array],
    labels: Array,
) -> tuple[Array, Array]:
    """(scores [B, C], nonfinite [B]: some real candidate's score is NaN or infinite)."""
    batch, num_candidates, length = labels.shape
    num_chunks = -(-num_candidates // chunk_size)
    padded = num_chunks * chunk_size
    labels = jnp.pad(
        labels, ((0, 0), (0, padded - num_candidates), (0, 0)), constant_values=IGNORE_INDEX
    )
    chunks = labels.reshape(batch, num_chunks, chunk_size, length).transpose(1, 0, 2, 3)
    context = model.apply({"params": params}, inputs, method=_encode)

    def score_chunk(chunk_labels):  # [B, c, L] -> ([B, c] summed log-prob, [B, c] token count)
        logits = model.apply({"params": params}, context, chunk_labels, method=_candidate_logits)
        flat = chunk_labels.reshape(batch * chunk_size, length)
        per_token = token_log_probs(logits, flat)
        return (
            per_token.sum(-1).reshape(batch, chunk_size),
            (flat != IGNORE_INDEX).sum(-1).reshape(batch, chunk_size),
        )

    total, count = jax.lax.map(score_chunk, chunks)  # [n, B, c]
    total = total.transpose(1, 0, 2).reshape(batch, padded)[:, :num_candidates]
    count = count.transpose(1, 0, 2).reshape(batch, padded)[:, :num_candidates]
    scores = total / jnp.maximum(count, 1) if length_normalize else total
    nonfinite = jnp.any((count > 0) & ~jnp.isfinite(scores), axis=1)
    return jnp.where(count > 0, scores, -jnp.inf), nonfinite  # a padding candidate never wins


def score_fn(model, length_normalize: bool = False, chunk_size: int = 0):
    """Un-jitted (params, inputs, labels [B, C, L]) -> (scores [B, C], nonfinite [B] bool), for
    callers that jit with shardings (ib_jax/eval/program.py); chunk_size 0 = all at once."""

    def run(params, inputs, labels):
        return _score(
            model, length_normalize, chunk_size or labels.shape[1], params, inputs, labels
        )

    return run


@functools.lru_cache(maxsize=32)
def compiled_scorer(model, length_normalize: bool = False, chunk_size: int = 0):
    """jit(params, inputs, labels [B, C, L]) -> [B, C]; chunk_size 0 = all candidates at once."""
    run = score_fn(model, length_normalize, chunk_size)
    return jax.jit(lambda *args: run(*args)[0])


def score_candidates(
    model,
    params: Any,
    batch: dict[str, Any],
    candidate_labels: Array | np.ndarray,
    *,
    length_normalize: bool = False,
    chunk_size: int = 0,
) -> Array:
    """Log-likelihood of every candidate. batch: CONTRACTS.md keys (extra keys ignored);
    candidate_labels [B, C, L] int32: candidate ids (see `candidate_labels`), -100 at pads (an
    all-pad row is a missing candidate and scores -inf). Returns [B, C] float32."""
    inputs = {k: jnp.asarray(batch[k]) for k in MODEL_INPUTS if batch.get(k) is not None}
    return compiled_scorer(model, bool(length_normalize), int(chunk_size))(
        params, inputs, jnp.asarray(candidate_labels, jnp.int32)
    )


def candidate_labels(
    candidates: Sequence[Sequence[str]], tokenizer, max_len: int, num_candidates: int | None = None
) -> np.ndarray:
    """Per-example candidate strings -> [B, C, max_len] labels (ids, -100 at pads).

    `tokenizer.encode_candidate(text, max_len)` (data_pipelines.text.LMTokenizer: ids + `</s>` for
    T5, ids alone for Vicuna, as LAVIS ranks them). C defaults to the largest candidate count in
    the batch; missing candidates are all -100 (score -inf)."""
    width = num_candidates or max((len(c) for c in candidates), default=1)
    out = np.full((len(candidates), max(width, 1), max_len), IGNORE_INDEX, np.int32)
    for row, options in enumerate(candidates):
        if len(options) > width:
            raise ValueError(
                f"example {row} has {len(options)} candidates, more than num_candidates={width}"
            )
        for col, text in enumerate(options):
            out[row, col] = tokenizer.encode_candidate(text, max_len)
    return out


__all__ = [
    "score_candidates",
    "compiled_scorer",
    "score_fn",
    "candidate_labels",
    "token_log_probs",
]
