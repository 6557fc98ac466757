"""The language-model interface: what the composition, generation and ranking need from an LM.

Every LM family (t5.py, llama.py) is a linen module implementing `LanguageModel`; the families and
their names live in `ib_jax.models.families`. Callers never branch on the family: InstructBLIP's
forward is `target_logits(encode_prompt(...), labels)`, generation is `prefill` then `step`, and
candidate ranking is one `encode_prompt` per example and one `target_logits` per candidate.

The prompt is always `[soft prompt][instruction]`: the projected Q-Former queries [B, P, D]
followed by the instruction ids [B, Li] (no image placeholders, either padding side).
"""

from __future__ import annotations

from typing import Protocol

import flax
import jax

Array = jax.Array
# What the prompt contributes to every target, computed once per example: arrays with the batch
# on axis 0 (so ranking repeats them per candidate with one `jnp.repeat`). An encoder-decoder
# names its encoder output "encoder_hidden" (reported by InstructBlipOutput).
Context = dict[str, Array]


@flax.struct.dataclass
class Prefill:
    """What `LanguageModel.prefill` returns (the cache comes back as the mutable 'cache' collection).

    logits:    [B, 1, V] float32, the distribution of the first new token.
    seen_ids:  [B, S] int32, the tokens already in the generated sequence as HF counts them for the
               repetition penalty (decoder-only: the instruction; encoder-decoder: the start token).
    seen_mask: [B, S] int32, 1 where `seen_ids` holds a token.
    """

    logits: Array
    seen_ids: Array
    seen_mask: Array


class LanguageModel(Protocol):
    """The methods each LM family implements (called inside `apply`; shapes with B the batch,
    P the soft-prompt length, Li the instruction length, Lt the target length, V the vocabulary).

    Every cache leaf created by `prefill` has the batch on axis 0 (scanned stacks add the layer
    axis second), so beam search expands and reorders the whole cache with one gather on axis 0;
    `BEAM_INVARIANT_CACHE` names the leaves equal across an example's beams, which a reorder may
    skip.
    """

    BEAM_INVARIANT_CACHE: tuple[str, ...]

    def embed(self, ids: Array) -> Array:
        """Token embeddings: ids [B, T] -> [B, T, D]."""
        ...

    def encode_prompt(self, soft_prompt: Array, input_ids: Array, attention_mask: Array) -> Context:
        """soft_prompt [B, P, D], input_ids / attention_mask [B, Li] -> Context."""
        ...

    def target_logits(self, context: Context, labels: Array) -> Array:
        """Teacher forcing: labels [B, Lt] (target ids, IGNORE_INDEX at pads) -> logits
        [B, Lt, V] float32 with `logits[:, j]` predicting `labels[:, j]`."""
        ...

    def prompt_logits(self, context: Context) -> Array:
        """Without a target -> logits [B, T, V] float32: a decoder-only LM gives one row per slot
        of `[soft prompt][instruction][pads]` (pads moved last); an encoder-decoder one row, the
        distribution of the first target token."""
        ...

    def prefill(
        self, soft_prompt: Array, input_ids: Array, attention_mask: Array, max_new_tokens: int
    ) -> Prefill:
        """Run the prompt and create the decode cache, with room for `max_new_tokens` generated
        tokens (apply with mutable=["cache"])."""
        ...

    def step(self, token_ids: Array) -> Array:
        """One token per example [B, 1] -> logits of the next [B, 1, V] float32, reading and
        updating the cache (apply with mutable=["cache"])."""
        ...
