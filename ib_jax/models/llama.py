"""LLaMA / Vicuna decoder with HF `LlamaForCausalLM` semantics, a decode cache, and InstructBLIP's
composition of the soft prompt with the instruction and the target (LAVIS `concat_text_input_output`).

Pre-norm blocks: RMSNorm (fp32) -> self-attention with rotary embeddings (HF's rotate_half layout,
theta from the config, grouped-query ready) -> residual -> RMSNorm -> SwiGLU MLP -> residual; a
final RMSNorm and an untied (or tied) head. Positions are `cumsum(mask) - 1`, so left padding and
pads moved to the end both give every real token the position it would have unpadded.

Decoding (`decode_mode` of `LlamaDecoder`):
  None       teacher-forced, full sequence (training, scoring).
  "prefill"  the prompt; creates the 'cache' collection: per layer `cached_key`/`cached_value`
             [B, Hkv, max_length, Dh] (rotated keys), and per example `key_mask` [B, max_length]
             (1 = a real token sits in that slot), `next_slot` [B] (where the next token is written;
             equal over the batch because prompts are laid out pads-first) and `next_position` [B]
             (its rotary position).
  "step"     one token per call, reading and updating the cache.
Every cache leaf has the batch on axis 0 (scanned stacks add the layer axis second), so beam
search reorders the whole cache with one gather on axis 0.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ib_jax.contract.batch import IGNORE_INDEX
from ib_jax.contract.model import LlamaConfig
from ib_jax.models import layers
from ib_jax.models.lm import Context, Prefill

Array = jax.Array


def positions_from_mask(mask: Array) -> Array:
    """[B, T] 0/1 -> [B, T] int32: each real token's index among the real tokens (pads get 0)."""
    return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)


def apply_rotary(x: Array, positions: Array, theta: float) -> Array:
    """x [B, T, H, Dh], positions [B, T] -> x rotated; HF layout: pairs are (i, i + Dh/2)."""
    head_dim = x.shape[-1]
    inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)  # [B, T, Dh/2]
    angles = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]  # [B, T, 1, Dh]
    cos, sin = jnp.cos(angles).astype(x.dtype), jnp.sin(angles).astype(x.dtype)
    first, second = jnp.split(x, 2, axis=-1)
    rotated = jnp.concatenate([-second, first], axis=-1)
    return x * cos + rotated * sin


def sort_pads(mask: Array, pads_first: bool) -> Array:
    """[B, T] 0/1 -> [B, T] permutation (source index per output slot) that moves the pads to one
    end and keeps the real tokens in order, whatever the padding side of the input."""
    key = mask.astype(jnp.int32) if pads_first else 1 - mask.astype(jnp.int32)
    return jnp.argsort(key, axis=-1, stable=True)


def _gather(x: Array, order: Array) -> Array:
    """x [B, T, ...] reordered along T by order [B, T]."""
    return jnp.take_along_axis(x, order.reshape(order.shape + (1,) * (x.ndim - 2)), axis=1)


class LlamaAttention(nn.Module):
    """Causal self-attention with rotary positions; in decode modes it writes into the cache."""

    config: LlamaConfig
    decode_mode: str | None = None
    max_decode_length: int = 0
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def _project(self, name: str, x: Array, heads: int) -> Array:
        return layers.DenseGeneral(
            (heads, self.config.head_dim),
            kernel_axes=("embed", "heads", "kv"),
            use_bias=False,
            name=name,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )(x)

    @nn.compact
    def __call__(self, x: Array, bias: Array, positions: Array, slot: Array | None) -> Array:
        """x [B, T, D], bias [B, 1, T|1, K], positions [B, T], slot (step: cache write index) -> [B, T, D]."""
        cfg = self.config
        query = apply_rotary(self._project("q_proj", x, cfg.num_heads), positions, cfg.rope_theta)
        key = apply_rotary(self._project("k_proj", x, cfg.num_kv_heads), positions, cfg.rope_theta)
        value = self._project("v_proj", x, cfg.num_kv_heads)
        key, value = layers.cached_key_value(
            self, key, value, self.decode_mode, self.max_decode_length, slot
        )
        out = layers.dot_product_attention(
            query,
            key,
            value,
            bias=bias,
            scale=cfg.head_dim**-0.5,
            heads_first_kv=self.decode_mode is not None,
        )
        out = layers.constrain(out, ("act_batch", "act_length", "act_heads", None))
        return layers.DenseGeneral(
            cfg.hidden_size,
            axis=(-2, -1),
            kernel_axes=("heads", "kv", "embed"),
            use_bias=False,
            name="o_proj",
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )(out)


class LlamaMLP(nn.Module):
    """SwiGLU: down(act(gate(x)) * up(x))."""

    config: LlamaConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """[B, T, D] -> [B, T, D]"""
        cfg = self.config
        dense = dict(use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype)
        gate = layers.DenseGeneral(
            cfg.intermediate_size, kernel_axes=("embed", "mlp"), name="gate_proj", **dense
        )(x)
        up = layers.DenseGeneral(
            cfg.intermediate_size, kernel_axes=("embed", "mlp"), name="up_proj", **dense
        )(x)
        h = layers.constrain(
            layers.activation(cfg.hidden_act)(gate) * up, ("act_batch", "act_length", "act_mlp")
        )
        return layers.DenseGeneral(
            cfg.hidden_size, kernel_axes=("mlp", "embed"), name="down_proj", **dense
        )(h)


class LlamaLayer(nn.Module):
    """One decoder block; scan-compatible (carry, ...) -> (carry, None)."""

    config: LlamaConfig
    decode_mode: str | None = None
    max_decode_length: int = 0
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, bias: Array, positions: Array, slot: Array | None):
        """x [B, T, D] (bias, positions, slot as LlamaAttention) -> ([B, T, D], None)."""
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        norm = lambda name: layers.RMSNorm(cfg.rms_norm_eps, name=name, **kw)  # noqa: E731
        attention = LlamaAttention(
            cfg, self.decode_mode, self.max_decode_length, name="self_attention", **kw
        )
        x = x + attention(norm("self_attention_norm")(x), bias, positions, slot)
        x = x + LlamaMLP(cfg, name="mlp", **kw)(norm("mlp_norm")(x))
        return layers.constrain(x, ("act_batch", "act_length", "act_embed")), None


class LlamaDecoder(nn.Module):
    """The layer stack and final norm; owns the per-example decode state (see the module docstring)."""

    config: LlamaConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    scan_layers: bool = False
    remat_policy: str = "none"

    @nn.compact
    def __call__(
        self,
        x: Array,
        mask: Array | None,
        decode_mode: str | None = None,
        max_decode_length: int = 0,
    ) -> Array:
        """x [B, T, D] embeddings, mask [B, T] (0 = pad; any padding side) -> hidden [B, T, D].

        prefill: `max_decode_length` is the cache length (prompt + tokens to come). step: T == 1, no mask.
        """
        cfg = self.config
        batch, length = x.shape[:2]
        slot = None
        if decode_mode == "step":
            key_mask = self.variable("cache", "key_mask", jnp.zeros, (batch, 0), jnp.int32)
            next_slot = self.variable("cache", "next_slot", jnp.zeros, (batch,), jnp.int32)
            next_position = self.variable("cache", "next_position", jnp.zeros, (batch,), jnp.int32)
            max_decode_length = key_mask.value.shape[1]
            slot = next_slot.value[0]
            key_mask.value = jax.lax.dynamic_update_slice(
                key_mask.value, jnp.ones((batch, 1), jnp.int32), (0, slot)
            )
            bias = layers.padding_mask_bias(
                None, key_mask.value
            )  # unwritten slots are 0: causal for free
            positions = next_position.value[:, None]
            next_slot.value = next_slot.value + 1
            next_position.value = next_position.value + 1
        else:
            mask = jnp.ones((batch, length), jnp.int32) if mask is None else mask.astype(jnp.int32)
            positions = positions_from_mask(mask)
            bias = layers.causal_mask_bias(length) + layers.padding_mask_bias(None, mask)
            if decode_mode == "prefill":
                if max_decode_length < length:
                    raise ValueError(
                        f"max_decode_length {max_decode_length} < prompt length {length}"
                    )
                padded = jnp.pad(mask, ((0, 0), (0, max_decode_length - length)))
                self.variable("cache", "key_mask", lambda: padded)
                self.variable("cache", "next_slot", lambda: jnp.full((batch,), length, jnp.int32))
                self.variable(
                    "cache", "next_position", lambda: jnp.sum(mask, axis=1, dtype=jnp.int32)
                )

        layer = layers.stack_layers(
            LlamaLayer,
            num_layers=cfg.num_layers,
            scan=self.scan_layers,
            remat_policy=self.remat_policy,
            in_axes=(nn.broadcast,) * 3,
        )
        layer_kw = dict(
            decode_mode=decode_mode,
            max_decode_length=max_decode_length,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        if self.scan_layers:
            x, _ = layer(cfg, name="layers", **layer_kw)(x, bias, positions, slot)
        else:
            for i in range(cfg.num_layers):
                x, _ = layer(cfg, name=f"layers_{i}", **layer_kw)(x, bias, positions, slot)
        return layers.RMSNorm(
            cfg.rms_norm_eps, name="final_norm", dtype=self.dtype, param_dtype=self.param_dtype
        )(x)


class Llama(nn.Module):
    """LlamaForCausalLM taking embeddings, behind the `LanguageModel` interface (lm.py), with
    InstructBLIP's layout of soft prompt, instruction and target (LAVIS `concat_text_input_output`):
    teacher forcing runs `[query][instruction][target][pads]`, generation `[pads][query][instruction]`
    then one token per `step`.
    """

    config: LlamaConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    scan_layers: bool = False
    remat_policy: str = "none"

    # Per-example decode state, equal across an example's beams.
    BEAM_INVARIANT_CACHE = ("key_mask", "next_slot", "next_position")

    def setup(self):
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.embed_tokens = layers.Embed(cfg.vocab_size, cfg.hidden_size, name="embed_tokens", **kw)
        self.decoder = LlamaDecoder(
            cfg, scan_layers=self.scan_layers, remat_policy=self.remat_policy, name="decoder", **kw
        )
        if not cfg.tie_word_embeddings:
            self.lm_head = layers.DenseGeneral(
                cfg.vocab_size,
                kernel_axes=("embed", "vocab"),
                use_bias=False,
                name="lm_head",
                out_dtype=jnp.float32,  # logits stay fp32 for the log-softmax (precision.py)
                **kw,
            )

    def embed(self, ids: Array) -> Array:
        """[B, T] -> [B, T, D]"""
        return self.embed_tokens(ids)

    def logits(self, hidden: Array) -> Array:
        """[B, T, D] -> [B, T, vocab] float32"""
        logits = (
            self.embed_tokens.attend(hidden)
            if self.config.tie_word_embeddings
            else self.lm_head(hidden)
        )
        return layers.constrain(
            logits.astype(jnp.float32), ("act_batch", "act_length", "act_vocab")
        )

    def encode_prompt(self, soft_prompt: Array, input_ids: Array, attention_mask: Array) -> Context:
        """The prompt cannot be run ahead of a target it precedes in one causal sequence without a
        cache, so the context is the inputs themselves: {"soft_prompt": [B, P, D],
        "input_ids": [B, Li], "attention_mask": [B, Li]}."""
        return {
            "soft_prompt": soft_prompt,
            "input_ids": input_ids,
            "attention_mask": attention_mask,
        }

    def target_logits(self, context: Context, labels: Array) -> Array:
        """labels [B, Lt] (target ids + `</s>`, IGNORE_INDEX at pads) -> logits [B, Lt, V].

        The sequence is `[query][instruction][target][pads]`: the target tokens are the labels
        themselves, and `logits[:, j]` is read at the slot before target j (HF's causal shift);
        the head runs on those slots only.
        """
        input_ids, attention_mask = context["input_ids"], context["attention_mask"]
        text_ids = jnp.concatenate([input_ids, labels], axis=1)
        text_mask = jnp.concatenate(
            [attention_mask.astype(jnp.int32), (labels != IGNORE_INDEX).astype(jnp.int32)], axis=1
        )
        embeds, mask, order = self._compose(
            context["soft_prompt"], text_ids, text_mask, pads_first=False
        )
        hidden = self.decoder(embeds, mask)
        # Target j sits in slot `slot_of[j]`; HF's shift: it is predicted from the slot before.
        slot_of = jnp.argsort(order, axis=1)[:, -labels.shape[1] :]
        return self.logits(_gather(hidden, jnp.maximum(slot_of - 1, 0)))

    def prompt_logits(self, context: Context) -> Array:
        """-> [B, P + Li, V] over `[query][instruction][pads]` (the instruction's pads moved last)."""
        embeds, mask, _ = self._compose(
            context["soft_prompt"], context["input_ids"], context["attention_mask"], False
        )
        return self.logits(self.decoder(embeds, mask))

    def prefill(
        self, soft_prompt: Array, input_ids: Array, attention_mask: Array, max_new_tokens: int
    ) -> Prefill:
        """Run the prompt `[query][instruction]` and create the cache (apply with mutable=["cache"]).

        soft_prompt [B, P, D], input_ids/attention_mask [B, Li] (either padding side). The prompt
        is laid out pads-first, so it ends in the same slot for every example; the cache has room
        for `max_new_tokens` further `step` calls. The instruction seeds the repetition penalty.
        """
        embeds, mask, _ = self._compose(soft_prompt, input_ids, attention_mask, pads_first=True)
        hidden = self.decoder(
            embeds, mask, decode_mode="prefill", max_decode_length=embeds.shape[1] + max_new_tokens
        )
        return Prefill(
            logits=self.logits(hidden[:, -1:]), seen_ids=input_ids, seen_mask=attention_mask
        )

    def step(self, token_ids: Array) -> Array:
        """One token per example [B, 1] -> logits of the next [B, 1, vocab] (mutable=["cache"])."""
        return self.logits(self.decoder(self.embed(token_ids), None, decode_mode="step"))

    def _compose(
        self, soft_prompt: Array, ids: Array, mask: Array, pads_first: bool
    ) -> tuple[Array, Array, Array]:
        """[query][text] with the text's pads moved to one end of the whole sequence.

        soft_prompt [B, P, D], ids/mask [B, T] -> (embeds [B, S, D], mask [B, S], order [B, S]),
        S = P + T; `order[b, s]` is the slot of the unsorted [query][text] sequence in slot s.
        """
        # Pad ids (IGNORE_INDEX, [PAD]) are never attended to; any valid row will do.
        text = self.embed(jnp.where(mask > 0, ids, 0))
        embeds = jnp.concatenate([soft_prompt.astype(text.dtype), text], axis=1)
        full_mask = jnp.concatenate(
            [jnp.ones(soft_prompt.shape[:2], jnp.int32), mask.astype(jnp.int32)], axis=1
        )
        order = sort_pads(full_mask, pads_first)
        embeds, full_mask = _gather(embeds, order), jnp.take_along_axis(full_mask, order, axis=1)
        return layers.constrain(embeds, ("act_batch", "act_length", "act_embed")), full_mask, order
