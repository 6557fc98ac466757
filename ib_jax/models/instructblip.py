"""InstructBLIP: image -> ViT -> instruction-aware Q-Former -> projection -> language model.

The projected query outputs are prepended to the language model's input embeddings (LAVIS; HF
scatters them into leading `<image>` placeholders, which is the same thing). Instruction ids
therefore carry no placeholder tokens. Video clips [B, F, H, W, 3] are encoded frame by frame and
their query outputs concatenated: F * num_query_tokens soft tokens.

The language model is whichever family `config.text` belongs to (ib_jax/models/families.py),
reached only through the `LanguageModel` interface (ib_jax/models/lm.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from ib_jax.contract.batch import MODEL_INPUTS
from ib_jax.contract.model import ModelConfig
from ib_jax.models import families, layers, lora
from ib_jax.models.lm import Context, Prefill
from ib_jax.models.losses import mean_cross_entropy
from ib_jax.models.qformer import QFormer
from ib_jax.models.vit import VisionTransformer

Array = jax.Array


@flax.struct.dataclass
class InstructBlipOutput:
    """What the teacher-forced forward returns (B batch, F frames, NQ query tokens)."""

    logits: Array  # [B, Lt, vocab] float32 (labels given); else the LM's prompt_logits
    loss: Array | None  # token-mean cross-entropy over labels != IGNORE_INDEX
    image_embeds: Array  # [B*F, 1 + patches, Dv] after ln_vision
    qformer_output: Array  # [B*F, NQ, Dq]
    language_model_inputs: Array  # [B, F*NQ, D_lm]
    encoder_hidden: Array | None  # encoder-decoder LMs: [B, F*NQ + Li, D_lm]; else None


class InstructBlip(lora.LoraScope, nn.Module):
    """The composition; its parameters are `vision`, `qformer`, `language_projection` and
    `language_model` (the LM family's own tree)."""

    config: ModelConfig

    def setup(self):
        cfg = self.config
        kw = dict(
            dtype=layers.canonicalize_dtype(cfg.dtype),
            param_dtype=layers.canonicalize_dtype(cfg.param_dtype),
        )
        stack = dict(scan_layers=cfg.scan_layers, remat_policy=cfg.remat_policy, **kw)
        family = families.family_of(cfg.text)
        self.vision = VisionTransformer(cfg.vision, name="vision", **stack)
        self.qformer = QFormer(
            cfg.qformer,
            cfg.num_query_tokens,
            instruction_aware=cfg.instruction_aware,
            name="qformer",
            **stack,
        )
        self.language_projection = layers.DenseGeneral(
            family.width(cfg.text), kernel_axes=(None, "embed"), name="language_projection", **kw
        )
        self.language_model = family.module_cls(cfg.text, name="language_model", **stack)

    def encode_image(
        self,
        pixel_values: Array,
        qformer_input_ids: Array | None,
        qformer_attention_mask: Array | None,
    ) -> tuple[Array, dict[str, Array]]:
        """[B, H, W, 3] or [B, F, H, W, 3] -> soft prompt [B, F*NQ, D_lm] and intermediates
        ("image_embeds", "qformer_output")."""
        batch = pixel_values.shape[0]
        num_frames = pixel_values.shape[1] if pixel_values.ndim == 5 else 1
        if pixel_values.ndim == 5:
            pixel_values = pixel_values.reshape((batch * num_frames,) + pixel_values.shape[2:])
            if qformer_input_ids is not None:
                qformer_input_ids = jnp.repeat(qformer_input_ids, num_frames, axis=0)
                if qformer_attention_mask is not None:
                    qformer_attention_mask = jnp.repeat(qformer_attention_mask, num_frames, axis=0)
        pixel_values = layers.constrain(pixel_values, ("act_batch", None, None, None))
        image_embeds = self.vision(pixel_values)
        qformer_output = self.qformer(image_embeds, qformer_input_ids, qformer_attention_mask)
        soft_prompt = self.language_projection(qformer_output)
        soft_prompt = soft_prompt.reshape(
            batch, num_frames * soft_prompt.shape[1], soft_prompt.shape[2]
        )
        return soft_prompt, {"image_embeds": image_embeds, "qformer_output": qformer_output}

    def encode_prompt(
        self,
        pixel_values: Array,
        qformer_input_ids: Array | None,
        qformer_attention_mask: Array | None,
        input_ids: Array,
        attention_mask: Array,
    ) -> Context:
        """Image + instruction [B, Li] -> the LM's per-example Context (see lm.py), computed once
        and shared by every target scored against it (candidate ranking)."""
        soft_prompt, _ = self.encode_image(pixel_values, qformer_input_ids, qformer_attention_mask)
        return self.language_model.encode_prompt(soft_prompt, input_ids, attention_mask)

    def target_logits(self, context: Context, labels: Array) -> Array:
        """Context (batch N) + labels [N, Lt] -> logits [N, Lt, vocab], `logits[:, j]` predicting
        `labels[:, j]`."""
        return self.language_model.target_logits(context, labels)

    def __call__(
        self,
        pixel_values: Array,
        qformer_input_ids: Array | None,
        qformer_attention_mask: Array | None,
        input_ids: Array,
        attention_mask: Array | None,
        labels: Array | None = None,
    ) -> InstructBlipOutput:
        """Teacher-forced forward (batch keys and shapes: ib_jax/contract/batch.py,
        docs/CONTRACTS.md).

        With labels [B, Lt]: logits [B, Lt, vocab] predicting them and the token-mean loss.
        Without: the LM's `prompt_logits` and no loss.
        """
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        soft_prompt, aux = self.encode_image(
            pixel_values, qformer_input_ids, qformer_attention_mask
        )
        context = self.language_model.encode_prompt(soft_prompt, input_ids, attention_mask)
        if labels is None:
            logits, loss = self.language_model.prompt_logits(context), None
        else:
            logits = self.language_model.target_logits(context, labels)
            loss = mean_cross_entropy(logits, labels)
        return InstructBlipOutput(
            logits=logits,
            loss=loss,
            encoder_hidden=context.get("encoder_hidden"),
            language_model_inputs=soft_prompt,
            **aux,
        )

    def prefill(
        self,
        pixel_values: Array,
        qformer_input_ids: Array | None,
        qformer_attention_mask: Array | None,
        input_ids: Array,
        attention_mask: Array,
        max_new_tokens: int,
    ) -> Prefill:
        """Generation: image + instruction [B, Li] (either padding side) -> the first new token's
        logits [B, 1, vocab] and the tokens seeding the repetition penalty; creates the decode
        cache (apply with mutable=["cache"])."""
        soft_prompt, _ = self.encode_image(pixel_values, qformer_input_ids, qformer_attention_mask)
        return self.language_model.prefill(soft_prompt, input_ids, attention_mask, max_new_tokens)

    def step(self, token_ids: Array) -> Array:
        """Generation: the last chosen tokens [B, 1] -> next-token logits [B, 1, vocab]; apply
        with the cache from `prefill` and mutable=["cache"]."""
        return self.language_model.step(token_ids)


def init_params(model: InstructBlip, rng: Array, batch: dict[str, Any]) -> Any:
    """Random parameters (boxed with logical axis metadata) for the batch's shapes
    (ib_jax/contract/batch.py keys; `labels` optional)."""
    return model.init(
        rng,
        batch["pixel_values"],
        batch.get("qformer_input_ids"),
        batch.get("qformer_attention_mask"),
        batch["input_ids"],
        batch.get("attention_mask"),
        labels=batch.get("labels"),
    )["params"]


# ---------------------------------------------------------------------------------------------
# The model as a search calls it (ib_jax/decode.py): pure functions of the parameters
# ---------------------------------------------------------------------------------------------


class LMCalls(NamedTuple):
    """The two calls a search makes into the model (any LM family, through `InstructBlip`):

    start(params, batch, max_new_tokens) -> (logits [B, V] of the first new token, cache,
                                             seen ids [B, S], seen mask [B, S])
    step(params, tokens [N], cache) -> (logits [N, V] of the next token, cache)

    Every cache leaf has the batch on axis 0, so beams are expanded with `jnp.repeat` and reordered
    with one gather; `beam_invariant` names the leaves a reorder may skip. The seen ids seed the
    repetition penalty (HF also counts its `<image>` placeholder ids in a decoder-only prompt; our
    inputs have none, which matters only with repetition_penalty != 1).
    """

    start: Callable[..., tuple[jax.Array, Any, jax.Array, jax.Array]]
    step: Callable[..., tuple[jax.Array, Any]]
    beam_invariant: tuple[str, ...]


def lm_calls(model) -> LMCalls:
    """`InstructBlip.prefill` / `InstructBlip.step` as pure functions of the parameters."""

    def start(params, batch, max_new_tokens):
        prefill, variables = model.apply(
            {"params": params},
            *(batch.get(k) for k in MODEL_INPUTS),
            max_new_tokens=max_new_tokens,
            method=InstructBlip.prefill,
            mutable=["cache"],
        )
        return prefill.logits[:, -1], variables["cache"], prefill.seen_ids, prefill.seen_mask

    def step(params, tokens, cache):
        logits, variables = model.apply(
            {"params": params, "cache": cache},
            tokens[:, None],
            method=InstructBlip.step,
            mutable=["cache"],
        )
        return logits[:, -1], variables["cache"]

    module_cls = families.family_of(model.config.text).module_cls
    return LMCalls(start, step, tuple(module_cls.BEAM_INVARIANT_CACHE))
