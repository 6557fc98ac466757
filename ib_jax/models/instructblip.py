"""InstructBLIP: image -> ViT -> instruction-aware Q-Former -> projection -> language model.

The projected query outputs are prepended to the language model's input embeddings (LAVIS; HF
scatters them into leading `<image>` placeholders, which is the same thing). Instruction ids
therefore carry no placeholder tokens. Video clips [B, F, H, W, 3] are encoded frame by frame and
their query outputs concatenated: F * num_query_tokens soft tokens.
"""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from ib_jax.models import layers
from ib_jax.models.configs import ModelConfig
from ib_jax.models.qformer import QFormer
from ib_jax.models.t5 import T5, shift_right
from ib_jax.models.vit import VisionTransformer

Array = jax.Array


@flax.struct.dataclass
class InstructBlipOutput:
    logits: Array  # [B, T_out, vocab] float32
    loss: Array | None  # token-mean cross-entropy over labels != -100
    image_embeds: Array  # [B*F, 1 + patches, Dv] after ln_vision
    qformer_output: Array  # [B*F, NQ, Dq]
    language_model_inputs: Array  # [B, F*NQ, D_lm]
    encoder_hidden: Array | None  # T5 encoder output [B, F*NQ + T_in, D_lm]


def cross_entropy(logits: Array, labels: Array) -> tuple[Array, Array]:
    """Summed token cross-entropy and token count over labels != -100. [B, T, V], [B, T] -> (), ()"""
    valid = labels != -100
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    token_nll = -jnp.take_along_axis(log_probs, jnp.where(valid, labels, 0)[..., None], axis=-1)[
        ..., 0
    ]
    return jnp.sum(token_nll * valid), jnp.sum(valid)


class InstructBlip(nn.Module):
    config: ModelConfig

    def setup(self):
        cfg = self.config
        kw = dict(
            dtype=layers.canonicalize_dtype(cfg.dtype),
            param_dtype=layers.canonicalize_dtype(cfg.param_dtype),
        )
        stack = dict(scan_layers=cfg.scan_layers, remat_policy=cfg.remat_policy, **kw)
        self.vision = VisionTransformer(cfg.vision, name="vision", **stack)
        self.qformer = QFormer(
            cfg.qformer,
            cfg.num_query_tokens,
            instruction_aware=cfg.instruction_aware,
            name="qformer",
            **stack,
        )
        lm_width = cfg.text.d_model if cfg.lm_type == "t5" else cfg.text.hidden_size
        self.language_projection = layers.DenseGeneral(
            lm_width, kernel_axes=(None, "embed"), name="language_projection", **kw
        )
        if cfg.lm_type == "t5":
            self.language_model = T5(cfg.text, name="language_model", **stack)
        else:
            from ib_jax.models.llama import Llama  # the decoder-only family

            self.language_model = Llama(cfg.text, name="language_model", **stack)

    def encode_image(
        self,
        pixel_values: Array,
        qformer_input_ids: Array | None,
        qformer_attention_mask: Array | None,
    ) -> tuple[Array, dict[str, Array]]:
        """[B, H, W, 3] or [B, F, H, W, 3] -> soft prompt [B, F*NQ, D_lm] and intermediates."""
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

    def encode(
        self,
        pixel_values: Array,
        qformer_input_ids: Array | None,
        qformer_attention_mask: Array | None,
        input_ids: Array,
        attention_mask: Array,
    ) -> tuple[Array, Array, dict[str, Array]]:
        """T5 path: soft prompt + instruction through the encoder -> ([B, S, D], mask [B, S], intermediates)."""
        soft_prompt, aux = self.encode_image(
            pixel_values, qformer_input_ids, qformer_attention_mask
        )
        inputs_embeds, mask = self._prepend(soft_prompt, input_ids, attention_mask)
        aux["language_model_inputs"] = soft_prompt
        return self.language_model.encode(inputs_embeds, mask), mask, aux

    def decode(
        self,
        decoder_input_ids: Array,
        encoder_hidden: Array | None,
        encoder_mask: Array | None,
        decoder_attention_mask: Array | None = None,
        decode_mode: str | None = None,
        max_decode_length: int = 0,
    ) -> Array:
        """T5 path: decoder ids [B, T] -> logits [B, T, vocab]; see t5.py for decode modes."""
        return self.language_model.decode(
            decoder_input_ids,
            encoder_hidden,
            encoder_mask,
            decoder_attention_mask,
            decode_mode=decode_mode,
            max_decode_length=max_decode_length,
        )

    def __call__(
        self,
        pixel_values: Array,
        qformer_input_ids: Array | None,
        qformer_attention_mask: Array | None,
        input_ids: Array,
        attention_mask: Array | None,
        decoder_input_ids: Array | None = None,
        decoder_attention_mask: Array | None = None,
        labels: Array | None = None,
    ) -> InstructBlipOutput:
        """Teacher-forced forward. Shapes in docs/CONTRACTS.md; decoder ids default to shift_right(labels)."""
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        if self.config.lm_type != "t5":
            return self._decoder_only_forward(
                pixel_values,
                qformer_input_ids,
                qformer_attention_mask,
                input_ids,
                attention_mask,
                labels,
            )
        text = self.config.text
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError("give decoder_input_ids or labels")
            decoder_input_ids = shift_right(labels, text.decoder_start_token_id, text.pad_token_id)
        encoder_hidden, encoder_mask, aux = self.encode(
            pixel_values, qformer_input_ids, qformer_attention_mask, input_ids, attention_mask
        )
        logits = self.decode(
            decoder_input_ids, encoder_hidden, encoder_mask, decoder_attention_mask
        )
        loss = None
        if labels is not None:
            total, count = cross_entropy(logits, labels)
            loss = total / jnp.maximum(count, 1)
        return InstructBlipOutput(logits=logits, loss=loss, encoder_hidden=encoder_hidden, **aux)

    def _decoder_only_forward(
        self,
        pixel_values,
        qformer_input_ids,
        qformer_attention_mask,
        input_ids,
        attention_mask,
        labels,
    ) -> InstructBlipOutput:
        soft_prompt, aux = self.encode_image(
            pixel_values, qformer_input_ids, qformer_attention_mask
        )
        logits, loss = self.language_model.forward_with_prefix(
            soft_prompt, input_ids, attention_mask, labels
        )
        return InstructBlipOutput(
            logits=logits, loss=loss, encoder_hidden=None, language_model_inputs=soft_prompt, **aux
        )

    def decoder_only_prefill(
        self,
        pixel_values: Array,
        qformer_input_ids: Array | None,
        qformer_attention_mask: Array | None,
        input_ids: Array,
        attention_mask: Array,
        max_new_tokens: int,
    ) -> Array:
        """Vicuna path, generation: image + instruction [B, Li] (either padding side) -> logits of the
        first new token [B, 1, vocab]; apply with mutable=["cache"]. See `Llama.prefill`."""
        soft_prompt, _ = self.encode_image(pixel_values, qformer_input_ids, qformer_attention_mask)
        return self.language_model.prefill(soft_prompt, input_ids, attention_mask, max_new_tokens)

    def decoder_only_step(self, token_ids: Array) -> Array:
        """Vicuna path, generation: the last chosen tokens [B, 1] -> next-token logits [B, 1, vocab];
        apply with the cache from `decoder_only_prefill` and mutable=["cache"]."""
        return self.language_model.step(token_ids)

    def _prepend(
        self, soft_prompt: Array, input_ids: Array, attention_mask: Array
    ) -> tuple[Array, Array]:
        embeds = self.language_model.embed(input_ids)
        embeds = jnp.concatenate([soft_prompt.astype(embeds.dtype), embeds], axis=1)
        mask = jnp.concatenate(
            [jnp.ones(soft_prompt.shape[:2], jnp.int32), attention_mask.astype(jnp.int32)], axis=1
        )
        return layers.constrain(embeds, ("act_batch", "act_length", "act_embed")), mask


def init_params(model: InstructBlip, rng: Array, batch: dict[str, Any]) -> Any:
    """Random parameters (boxed with logical axis metadata) for the batch's shapes."""
    return model.init(
        rng,
        batch["pixel_values"],
        batch.get("qformer_input_ids"),
        batch.get("qformer_attention_mask"),
        batch["input_ids"],
        batch.get("attention_mask"),
        labels=batch.get("labels"),
    )["params"]
