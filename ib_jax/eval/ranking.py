"""Candidate ranking ("vocabulary ranking" in the paper): score every candidate answer by its LM likelihood.

score(candidate) = sum over the candidate's tokens (its `</s>` included) of log p(token | image,
instruction, previous tokens), or that sum divided by the token count (`length_normalize=True`).

One jitted pass per batch: the image and instruction are encoded once per example (T5: the
encoder output; Vicuna: the soft prompt), repeated for the candidates, and the decoder runs
teacher-forced over all candidates at once; `chunk_size` bounds the [B * chunk, L, vocab] logits
(Visual Dialog has 100 candidates per example) by scanning over chunks of candidates.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ib_jax.batch import MODEL_INPUTS
from ib_jax.models.t5 import shift_right

Array = jax.Array


def token_log_probs(logits: Array, labels: Array) -> Array:
    """[N, L, V] logits, [N, L] labels (-100 = pad) -> [N, L] log p(label), 0 at pads."""
    valid = labels != -100
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(log_probs, jnp.where(valid, labels, 0)[..., None], axis=-1)[..., 0]
    return jnp.where(valid, picked, 0.0)


def _encode(module, inputs: dict[str, Array]) -> tuple[Array, ...]:
    """Inside `apply`: what the candidates share, computed once per example.
    T5: (encoder output [B, S, D], mask [B, S]); Vicuna: (soft prompt [B, NQ, D], ids, mask)."""
    if module.config.lm_type == "t5":
        encoder_hidden, encoder_mask, _ = module.encode(*(inputs.get(k) for k in MODEL_INPUTS))
        return encoder_hidden, encoder_mask
    soft_prompt, _ = module.encode_image(
        inputs["pixel_values"],
        inputs.get("qformer_input_ids"),
        inputs.get("qformer_attention_mask"),
    )
    return soft_prompt, inputs["input_ids"], inputs["attention_mask"]


def _candidate_logits(module, context: tuple[Array, ...], labels: Array) -> Array:
    """Inside `apply`: labels [B, c, L] -> logits [B*c, L, V] with logits[:, j] predicting labels[:, j]."""
    batch, num_candidates, length = labels.shape
    flat = labels.reshape(batch * num_candidates, length)
    repeated = [
        jnp.repeat(x, num_candidates, axis=0) for x in context
    ]  # example-major, like `flat`
    if module.config.lm_type == "t5":
        text = module.config.text
        decoder_ids = shift_right(flat, text.decoder_start_token_id, text.pad_token_id)
        return module.decode(decoder_ids, *repeated)
    logits, _ = module.language_model.forward_with_prefix(*repeated, flat)
    return logits


def _score(
    model,
    length_normalize: bool,
    chunk_size: int,
    params: Any,
    inputs: dict[str, Array],
    labels: Array,
) -> Array:
    batch, num_candidates, length = labels.shape
    num_chunks = -(-num_candidates // chunk_size)
    padded = num_chunks * chunk_size
    labels = jnp.pad(labels, ((0, 0), (0, padded - num_candidates), (0, 0)), constant_values=-100)
    chunks = labels.reshape(batch, num_chunks, chunk_size, length).transpose(1, 0, 2, 3)
    context = model.apply({"params": params}, inputs, method=_encode)

    def score_chunk(chunk_labels):  # [B, c, L] -> ([B, c] summed log-prob, [B, c] token count)
        logits = model.apply({"params": params}, context, chunk_labels, method=_candidate_logits)
        flat = chunk_labels.reshape(batch * chunk_size, length)
        per_token = token_log_probs(logits, flat)
        return (
            per_token.sum(-1).reshape(batch, chunk_size),
            (flat != -100).sum(-1).reshape(batch, chunk_size),
        )

    total, count = jax.lax.map(score_chunk, chunks)  # [n, B, c]
    total = total.transpose(1, 0, 2).reshape(batch, padded)[:, :num_candidates]
    count = count.transpose(1, 0, 2).reshape(batch, padded)[:, :num_candidates]
    scores = total / jnp.maximum(count, 1) if length_normalize else total
    return jnp.where(count > 0, scores, -jnp.inf)  # an empty (padding) candidate never wins


@functools.lru_cache(maxsize=32)
def compiled_scorer(model, length_normalize: bool = False, chunk_size: int = 0):
    """jit(params, inputs, labels [B, C, L]) -> [B, C]; chunk_size 0 = all candidates at once."""

    def run(params, inputs, labels):
        return _score(
            model, length_normalize, chunk_size or labels.shape[1], params, inputs, labels
        )

    return jax.jit(run)


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
    candidate_labels [B, C, L] int32: candidate ids + `</s>`, -100 at pads (an all-pad row is a
    missing candidate and scores -inf). Returns [B, C] float32."""
    inputs = {k: jnp.asarray(batch[k]) for k in MODEL_INPUTS if batch.get(k) is not None}
    return compiled_scorer(model, bool(length_normalize), int(chunk_size))(
        params, inputs, jnp.asarray(candidate_labels, jnp.int32)
    )


def candidate_labels(
    candidates: Sequence[Sequence[str]], tokenizer, max_len: int, num_candidates: int | None = None
) -> np.ndarray:
    """Per-example candidate strings -> [B, C, max_len] labels (ids + `</s>`, -100 at pads).

    `tokenizer.encode_target(text, max_len)` (data_pipelines.text.LMTokenizer). C defaults to the
    largest candidate count in the batch; missing candidates are all -100 (score -inf)."""
    width = num_candidates or max((len(c) for c in candidates), default=1)
    out = np.full((len(candidates), max(width, 1), max_len), -100, np.int32)
    for row, options in enumerate(candidates):
        if len(options) > width:
            raise ValueError(
                f"example {row} has {len(options)} candidates, more than num_candidates={width}"
            )
        for col, text in enumerate(options):
            out[row, col] = tokenizer.encode_target(text, max_len)
    return out


__all__ = ["score_candidates", "compiled_scorer", "candidate_labels", "token_log_probs"]
