"""Logits processors of HF generation (transformers v5), in HF's order and arithmetic, and the
numeric generation settings they read.

`Knobs` are traced scalars, so an eval job whose datasets override them shares one compiled
decode per shape. Order, as HF applies them: repetition penalty (`RepetitionPenaltyLogitsProcessor`),
min-new-tokens (EOS -> -inf), then for sampling temperature and top-p (`TopPLogitsWarper`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


class Knobs(NamedTuple):
    """Numeric settings, passed as traced scalars so that changing them does not recompile
    (per-dataset overrides in an eval job share one executable per shape)."""

    min_new_tokens: Array  # int32 ()
    # float32 [max_new_tokens + 1]: n ** length_penalty (HF computes in float64, then float32)
    length_divisors: Array
    repetition_penalty: Array  # float32 ()
    temperature: Array  # float32 ()
    top_p: Array  # float32 ()
    # bool (): whether the tokens the LM has already seen (`Prefill.seen_ids`: a decoder-only
    # prompt, or T5's decoder start token) count for the repetition penalty. HF `generate` counts
    # whatever is in `input_ids`: HF's InstructBLIP passes the decoder-only prompt there (True);
    # LAVIS's Vicuna model generates from `inputs_embeds` alone, so its penalty covers the
    # generated tokens only (False). T5's prompt is on the encoder side either way.
    penalize_prompt: Array


def make_knobs(
    max_new_tokens: int,
    *,
    min_new_tokens: int = 0,
    length_penalty: float = 1.0,
    repetition_penalty: float = 1.0,
    temperature: float = 1.0,
    top_p: float = 1.0,
    penalize_prompt: bool = True,
) -> Knobs:
    """The numeric generation settings as arrays; `length_divisors[n]` = n ** length_penalty
    divides a beam's summed log-probability once it holds n generated tokens (HF's beam scorer:
    n counts the new tokens, the EOS included, neither the T5 start token nor a prompt)."""
    if repetition_penalty <= 0 or temperature <= 0 or not 0 < top_p <= 1 or min_new_tokens < 0:
        raise ValueError(
            "need repetition_penalty > 0, temperature > 0, 0 < top_p <= 1, min_new_tokens >= 0;"
            f" got {repetition_penalty}, {temperature}, {top_p}, {min_new_tokens}"
        )
    divisors = [1.0] + [float(n) ** float(length_penalty) for n in range(1, max_new_tokens + 1)]
    return Knobs(
        np.int32(min_new_tokens),
        np.asarray(divisors, np.float64).astype(np.float32),
        np.float32(repetition_penalty),
        np.float32(temperature),
        np.float32(top_p),
        np.bool_(penalize_prompt),
    )


def lavis_lengths(max_len: int, min_len: int, *, encoder_decoder: bool) -> tuple[int, int]:
    """LAVIS's `generate(max_length=max_len, min_length=min_len)` as (max_new_tokens,
    min_new_tokens), the lengths `generate` here takes.

    HF's `min_length` counts the whole sequence in `input_ids` (MinLengthLogitsProcessor:
    EOS blocked while `input_ids.shape[-1] < min_length`). FlanT5 (`blip2_t5_instruct.generate`
    passes `max_new_tokens=max_length, min_length=min_length`): the decoder ids start with the
    start token, so min_len counts it. Vicuna (`blip2_vicuna_instruct.generate` passes
    `max_length=max_length, min_length=min_length` with `inputs_embeds` only): HF 4.28-4.33
    (LAVIS requires >= 4.28, pins 4.33.2) start `input_ids` at `[[bos_token_id]]`
    (`_maybe_initialize_input_ids_for_generation`), so both lengths count that placeholder.
    """
    if max_len < 1 or min_len < 0:
        raise ValueError(f"need max_len >= 1 and min_len >= 0, got {max_len}, {min_len}")
    max_new = max_len if encoder_decoder else max_len - 1
    return max_new, max(min_len - 1, 0)


def seen_presence(ids: Array, mask: Array, vocab_size: int, knobs: Knobs) -> Array:
    """[N, S] seen ids (+ mask) -> [N, V] bool: the tokens the repetition penalty starts from
    (none of them when `knobs.penalize_prompt` is off)."""
    return presence_mask(ids, jnp.where(knobs.penalize_prompt, mask, 0), vocab_size)


def presence_mask(ids: Array, mask: Array, vocab_size: int) -> Array:
    """[N, P] ids (+ mask) -> [N, V] bool: which tokens occur in each row's sequence."""
    rows = jnp.arange(ids.shape[0])[:, None]
    safe = jnp.clip(ids, 0, vocab_size - 1)
    return jnp.zeros((ids.shape[0], vocab_size), bool).at[rows, safe].max(mask.astype(bool))


def apply_processors(
    scores: Array, presence: Array, num_generated: Array, knobs: Knobs, eos_token_id: int
) -> Array:
    """Repetition penalty, then min-new-tokens: scores [N, V] float32 (raw logits for greedy and
    sampling, log-softmax for beams), presence [N, V], num_generated () -> [N, V]. A penalty of 1
    is an exact identity."""
    penalty = knobs.repetition_penalty
    penalised = jnp.where(scores < 0, scores * penalty, scores / penalty)
    scores = jnp.where(presence, penalised, scores)
    blocked = num_generated < knobs.min_new_tokens
    return scores.at[:, eos_token_id].set(jnp.where(blocked, -jnp.inf, scores[:, eos_token_id]))


def top_p_filter(logits: Array, top_p: Array | float, min_tokens_to_keep: int = 1) -> Array:
    """HF TopPLogitsWarper: drop the low tail whose cumulative probability is <= 1 - top_p. [N, V]"""
    order = jnp.argsort(logits, axis=-1)  # ascending, as HF sorts
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
    remove_sorted = cumulative <= (1 - top_p)
    remove_sorted = remove_sorted.at[:, -min_tokens_to_keep:].set(False)
    rows = jnp.arange(logits.shape[0])[:, None]
    remove = jnp.zeros_like(remove_sorted).at[rows, order].set(remove_sorted)
    return jnp.where(remove, -jnp.inf, logits)
