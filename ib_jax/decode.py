"""Batched, jitted generation: greedy, beam search and top-p sampling with the decode cache.

Semantics follow Hugging Face `GenerationMixin.generate` (transformers v5) token for token:

- logits processors in HF's order (ib_jax/logits_processors.py): repetition penalty over every
  token of the sequence (the T5 start token, or a decoder-only prompt, included, as HF's
  InstructBLIP passes the prompt as `input_ids`; `penalize_prompt=False` leaves the prompt out, as
  LAVIS's Vicuna model, which generates from `inputs_embeds` alone), min-new-tokens
  (EOS -> -inf while fewer than `min_new_tokens` tokens were generated), then for sampling
  temperature and top-p (`TopPLogitsWarper`, min_tokens_to_keep=1).
- greedy / sampling (`_sample`): processors act on raw logits; finished rows emit `pad`.
- beam search (`_beam_search`): processors act on log-softmax scores; 2*num_beams candidates per
  step; a candidate that hits EOS (or the length limit) among the top num_beams is scored
  `sum_logprobs / generated_len ** length_penalty` (generated_len counts the EOS, not the T5
  start token) and merged into the finished set; early_stopping=False with HF's heuristic (stop a
  row once its best running beam, penalised at the current length, cannot beat its worst
  finished one) and the loop stops when no row can improve or every candidate hit a criterion.

The whole decode (encoder, prefill, `lax.while_loop` over steps, early exit when all rows are
done) is one jitted function per (model, DecodeSettings), cached; DecodeSettings holds what fixes
shapes and control flow (max_new_tokens, num_beams, do_sample, eos, pad), while the numeric knobs
(min_new_tokens, length_penalty, repetition_penalty, temperature, top_p, penalize_prompt) are
traced, so an eval
job with per-dataset overrides compiles once per shape, not once per override. The model is reached
through `InstructBlip.prefill` and `InstructBlip.step` only (any LM family; ib_jax/models/lm.py),
as `ib_jax.models.instructblip.lm_calls` wraps them.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ib_jax.contract.batch import MODEL_INPUTS
from ib_jax.logits_processors import (
    Knobs,
    apply_processors,
    lavis_lengths,
    make_knobs,
    presence_mask,
    seen_presence,
    top_p_filter,
)
from ib_jax.models.instructblip import LMCalls, lm_calls

Array = jax.Array
Cache = Any
Out = tuple[Array, Array]  # tokens [B, max_new_tokens], nonfinite [B]: NaN/inf while undecided
_NEG = -1.0e9  # HF's "very large negative" for beam bookkeeping (not -inf: it must stay comparable)


@dataclasses.dataclass(frozen=True)
class DecodeSettings:
    """Static generation settings: the ones that change shapes or control flow. One compiled
    function per distinct value (cached)."""

    max_new_tokens: int
    eos_token_id: int
    pad_token_id: int
    num_beams: int = 1
    do_sample: bool = False

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.num_beams < 1:
            raise ValueError(f"num_beams must be >= 1, got {self.num_beams}")
        if self.num_beams > 1 and self.do_sample:
            raise NotImplementedError(
                "beam sampling (num_beams > 1 with do_sample) is not implemented"
            )


# ---------------------------------------------------------------------------------------------
# Greedy / sampling
# ---------------------------------------------------------------------------------------------


def _greedy_or_sample(
    lm: LMCalls, settings: DecodeSettings, params, batch, knobs: Knobs, rng
) -> Out:
    steps = settings.max_new_tokens
    logits, cache, context, context_mask = lm.start(params, batch, steps)
    batch_size, vocab = logits.shape
    presence = seen_presence(context, context_mask, vocab, knobs)

    def choose(logits, presence, i, rng):
        scores = apply_processors(
            logits.astype(jnp.float32), presence, i, knobs, settings.eos_token_id
        )
        if not settings.do_sample:
            return jnp.argmax(scores, axis=-1).astype(jnp.int32)
        # HF skips TopP when top_p == 1; the filter would still drop tokens whose probability
        # underflows to 0, so select explicitly.
        scores = scores / knobs.temperature
        scores = jnp.where(knobs.top_p < 1.0, top_p_filter(scores, knobs.top_p), scores)
        return jax.random.categorical(jax.random.fold_in(rng, i), scores, axis=-1).astype(jnp.int32)

    def emit(state, logits):
        i = state["i"]
        token = choose(logits, state["presence"], i, rng)
        token = jnp.where(state["done"], settings.pad_token_id, token)
        rows = jnp.arange(batch_size)
        return dict(
            i=i + 1,
            tokens=state["tokens"].at[:, i].set(token),
            done=state["done"] | (token == settings.eos_token_id),
            presence=state["presence"].at[rows, token].set(True),
            cache=state["cache"],
            last=token,
            nonfinite=state["nonfinite"] | (~state["done"] & ~jnp.isfinite(logits).all(-1)),
        )

    state = dict(
        i=jnp.int32(0),
        tokens=jnp.full((batch_size, steps), settings.pad_token_id, jnp.int32),
        done=jnp.zeros((batch_size,), bool),
        presence=presence,
        cache=cache,
        last=jnp.zeros((batch_size,), jnp.int32),
        nonfinite=jnp.zeros((batch_size,), bool),
    )
    state = emit(state, logits)

    def cond(state):
        return (state["i"] < steps) & ~jnp.all(state["done"])

    def body(state):
        logits, cache = lm.step(params, state["last"], state["cache"])
        return emit(dict(state, cache=cache), logits)

    state = jax.lax.while_loop(cond, body, state)
    return state["tokens"], state["nonfinite"]


# ---------------------------------------------------------------------------------------------
# Beam search
# ---------------------------------------------------------------------------------------------


def _gather_beams(x: Array, index: Array) -> Array:
    """x [B, K, ...], index [B, K'] -> [B, K', ...]"""
    return jnp.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 2)), axis=1)


def _reorder_cache(
    cache: Cache, reorder: Callable[[Array], Array], invariant: tuple[str, ...]
) -> Cache:
    """Gather the cache to the surviving beams, skipping the leaves named in `invariant` (equal
    across an example's beams since beam expansion, so a reorder within the example leaves them
    unchanged; skipping the T5 encoder keys/values saves ~12% of 5-beam time)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x: x if getattr(path[-1], "key", None) in invariant else reorder(x),
        cache,
    )


def _beam_search(lm: LMCalls, settings: DecodeSettings, params, batch, knobs: Knobs, _rng) -> Out:
    steps, beams = settings.max_new_tokens, settings.num_beams
    keep = 2 * beams  # HF: max(2, 1 + number of EOS ids) * num_beams with one EOS id
    logits, cache, context, context_mask = lm.start(params, batch, steps)
    batch_size, vocab = logits.shape
    expand = lambda x: jnp.repeat(x, beams, axis=0)  # noqa: E731  [B, ...] -> [B*K, ...]
    cache = jax.tree_util.tree_map(expand, cache)
    logits = expand(logits)
    divisors = knobs.length_divisors
    top_mask = jnp.arange(keep) < beams

    def beam_step(state, logits):
        i = state["i"]  # tokens generated so far; this step writes position i
        bad_logits = ~jnp.isfinite(logits).all(-1).reshape(batch_size, beams).any(-1)
        log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        log_probs = apply_processors(log_probs, state["presence"], i, knobs, settings.eos_token_id)
        log_probs = (
            log_probs.reshape(batch_size, beams, vocab) + state["running_scores"][:, :, None]
        )
        topk_scores, topk_index = jax.lax.top_k(log_probs.reshape(batch_size, beams * vocab), keep)
        source_beam, token = topk_index // vocab, (topk_index % vocab).astype(jnp.int32)
        topk_seqs = _gather_beams(state["running_seqs"], source_beam).at[:, :, i].set(token)
        hits = (token == settings.eos_token_id) | (i + 1 >= steps)

        # Running beams for the next step: the best non-finished candidates.
        running_candidates = topk_scores + hits.astype(jnp.float32) * _NEG
        next_scores, next_index = jax.lax.top_k(running_candidates, beams)
        running_seqs = _gather_beams(topk_seqs, next_index)

        # Finished set: merge penalised just-finished top-`beams` candidates, keep the best `beams`.
        just_finished = hits & top_mask[None, :]
        finished_candidates = topk_scores / divisors[i + 1]
        finished_candidates = (
            finished_candidates + (~state["improvable"][:, None]).astype(jnp.float32) * _NEG
        )
        finished_candidates = finished_candidates + (~just_finished).astype(jnp.float32) * _NEG
        merged_scores = jnp.concatenate([state["finished_scores"], finished_candidates], axis=1)
        merged_seqs = jnp.concatenate([state["finished_seqs"], topk_seqs], axis=1)
        merged_done = jnp.concatenate([state["is_finished"], just_finished], axis=1)
        finished_scores, merged_index = jax.lax.top_k(merged_scores, beams)
        is_finished = _gather_beams(merged_done, merged_index)

        # Surviving beams, gathered within each example: a batch-sharded cache is not all-gathered.
        source = _gather_beams(source_beam, next_index)  # [B, K]

        def reorder(x):
            by_example = x.reshape((batch_size, beams) + x.shape[1:])
            return _gather_beams(by_example, source).reshape(x.shape)

        next_tokens = running_seqs[:, :, i].reshape(-1)
        presence = (
            reorder(state["presence"]).at[jnp.arange(batch_size * beams), next_tokens].set(True)
        )

        # HF's early-stop heuristic (early_stopping=False): length = tokens generated so far.
        best_running = next_scores[:, :1] / divisors[i + 1]
        worst_finished = jnp.where(
            is_finished, jnp.min(finished_scores, axis=1, keepdims=True), _NEG
        )
        improvable = state["improvable"] & jnp.any(best_running > worst_finished, axis=1)
        return dict(
            i=i + 1,
            running_seqs=running_seqs,
            running_scores=next_scores,
            finished_seqs=_gather_beams(merged_seqs, merged_index),
            finished_scores=finished_scores,
            is_finished=is_finished,
            improvable=improvable,
            presence=presence,
            cache=_reorder_cache(state["cache"], reorder, lm.beam_invariant),
            go_on=jnp.any(improvable) & ~jnp.all(hits),
            nonfinite=state["nonfinite"] | (state["improvable"] & bad_logits),
        )

    seqs = jnp.full((batch_size, beams, steps), settings.pad_token_id, jnp.int32)
    state = dict(
        i=jnp.int32(0),
        running_seqs=seqs,
        # Only beam 0 is live at first, so the K copies do not all pick the same tokens.
        running_scores=jnp.zeros((batch_size, beams), jnp.float32).at[:, 1:].set(_NEG),
        finished_seqs=seqs,
        finished_scores=jnp.full((batch_size, beams), _NEG, jnp.float32),
        is_finished=jnp.zeros((batch_size, beams), bool),
        improvable=jnp.ones((batch_size,), bool),
        presence=expand(seen_presence(context, context_mask, vocab, knobs)),
        cache=cache,
        go_on=jnp.bool_(True),
        nonfinite=jnp.zeros((batch_size,), bool),
    )
    state = beam_step(state, logits)

    def cond(state):
        return (state["i"] < steps) & state["go_on"]

    def body(state):
        tokens = state["running_seqs"][:, :, state["i"] - 1].reshape(-1)
        logits, cache = lm.step(params, tokens, state["cache"])
        return beam_step(dict(state, cache=cache), logits)

    state = jax.lax.while_loop(cond, body, state)
    best = state["finished_seqs"][:, 0]
    # Positions after the first EOS hold pad (HF fills them with its own filler value).
    after_eos = (
        jnp.cumsum(best == settings.eos_token_id, axis=1) - (best == settings.eos_token_id) > 0
    )
    return jnp.where(after_eos, settings.pad_token_id, best), state["nonfinite"]


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def search_fn(model, settings: DecodeSettings) -> Callable[..., Out]:
    """Un-jitted (params, batch, knobs, rng) -> Out, for callers jitting with their shardings."""
    search = _beam_search if settings.num_beams > 1 else _greedy_or_sample
    return functools.partial(search, lm_calls(model), settings)


@functools.lru_cache(maxsize=64)
def compiled_generate(
    model, settings: DecodeSettings
) -> Callable[[Any, dict[str, Array], Knobs, Array], Array]:
    """jit(params, batch, knobs, rng) -> [B, max_new_tokens] int32 for one (model, settings); cached."""
    search = search_fn(model, settings)
    return jax.jit(lambda *args: search(*args)[0])


def settings_and_knobs(
    text_config: Any,
    *,
    max_new_tokens: int,
    min_new_tokens: int = 0,
    num_beams: int = 1,
    length_penalty: float = 1.0,
    repetition_penalty: float = 1.0,
    do_sample: bool = False,
    top_p: float = 1.0,
    temperature: float = 1.0,
    penalize_prompt: bool = True,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
) -> tuple[DecodeSettings, Knobs]:
    """One generation request as its static settings (one compile each) and its numeric knobs;
    eos/pad default to the LM config's (`text_config`) ids."""
    settings = DecodeSettings(
        max_new_tokens=int(max_new_tokens),
        num_beams=int(num_beams),
        do_sample=bool(do_sample),
        eos_token_id=int(text_config.eos_token_id if eos_token_id is None else eos_token_id),
        pad_token_id=int(text_config.pad_token_id if pad_token_id is None else pad_token_id),
    )
    knobs = make_knobs(
        int(max_new_tokens),
        min_new_tokens=int(min_new_tokens),
        length_penalty=length_penalty,
        repetition_penalty=repetition_penalty,
        temperature=temperature,
        top_p=top_p,
        penalize_prompt=penalize_prompt,
    )
    return settings, knobs


def generate(
    model,
    params: Any,
    batch: dict[str, Any],
    *,
    max_new_tokens: int,
    min_new_tokens: int = 0,
    num_beams: int = 1,
    length_penalty: float = 1.0,
    repetition_penalty: float = 1.0,
    do_sample: bool = False,
    top_p: float = 1.0,
    temperature: float = 1.0,
    penalize_prompt: bool = True,
    rng: Array | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
) -> Array:
    """Generate for a batch (CONTRACTS.md keys; extra keys such as "valid"/"meta" are ignored).

    Returns [B, max_new_tokens] int32: the new tokens only (no T5 start token), the EOS included,
    pad after it. eos/pad default to the LM config's ids. Lengths count new tokens; a LAVIS
    `max_len`/`min_len` pair converts with `lavis_lengths`.
    """
    settings, knobs = settings_and_knobs(
        model.config.text,
        max_new_tokens=max_new_tokens,
        min_new_tokens=min_new_tokens,
        num_beams=num_beams,
        length_penalty=length_penalty,
        repetition_penalty=repetition_penalty,
        do_sample=do_sample,
        top_p=top_p,
        temperature=temperature,
        penalize_prompt=penalize_prompt,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
    )
    if do_sample and rng is None:
        raise ValueError("do_sample=True needs an rng (jax.random.key)")
    inputs = {k: jnp.asarray(batch[k]) for k in MODEL_INPUTS if batch.get(k) is not None}
    if rng is None:
        rng = jax.random.key(0)
    return compiled_generate(model, settings)(params, inputs, knobs, rng)


def decode_text(tokens: Array | np.ndarray, tokenizer, eos_token_id: int) -> list[str]:
    """[B, T] ids -> strings, cut at the first EOS (tokenizer: anything with `.decode(ids)`)."""
    # Model vocabularies are padded past the tokenizer's (FlanT5: 32128 vs 32100 pieces); those ids
    # have no text and are dropped rather than crashing the tokenizer.
    limit = getattr(tokenizer, "vocab_size", None)
    texts = []
    for row in np.asarray(tokens):
        end = np.flatnonzero(row == eos_token_id)
        row = row[: end[0]] if end.size else row
        if limit is not None:
            row = row[row < limit]
        texts.append(tokenizer.decode(row).strip())
    return texts


__all__ = [
    *("DecodeSettings", "Knobs", "make_knobs", "LMCalls", "lm_calls", "compiled_generate"),
    *("search_fn", "settings_and_knobs", "generate", "decode_text", "top_p_filter"),
    "lavis_lengths",
    "presence_mask",
]
