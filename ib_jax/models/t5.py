"""T5 encoder-decoder (FlanT5) with HF `T5ForConditionalGeneration` semantics and a decode cache.

RMSNorm (fp32), no biases, no 1/sqrt(d) attention scaling, relative position bias owned by the
stack (HF: block 0) and added in every layer, FFN plain or gated with the configured activation,
untied `lm_head` or tied embedding, optional d_model**-0.5 output scaling (original T5).

Decoding (`decode_mode`):
  None       teacher-forced, full sequence (training, scoring).
  "prefill"  the first T decoder tokens; creates the 'cache' collection (self-attention K/V of
             length `max_decode_length`, the projected encoder K/V, the encoder mask, the position).
  "step"     one token per call, reading and updating the cache; needs no encoder inputs.
Every cache leaf has the batch on axis 0, so beam search reorders it with one gather.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from ib_jax.contract.batch import IGNORE_INDEX
from ib_jax.contract.model import T5Config
from ib_jax.models import layers
from ib_jax.models.lm import Context, Prefill

Array = jax.Array


def relative_position_bucket(
    relative_position: Array, bidirectional: bool, num_buckets: int, max_distance: int
) -> Array:
    """T5's bucketing of (key - query) offsets; small offsets exact, larger ones log-spaced."""
    buckets = jnp.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative_position > 0).astype(jnp.int32) * num_buckets
        relative_position = jnp.abs(relative_position)
    else:
        relative_position = -jnp.minimum(relative_position, 0)
    max_exact = num_buckets // 2
    is_small = relative_position < max_exact
    safe = jnp.maximum(relative_position, 1).astype(jnp.float32)
    large = max_exact + (
        jnp.log(safe / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    ).astype(jnp.int32)
    large = jnp.minimum(large, num_buckets - 1)
    return buckets + jnp.where(is_small, relative_position, large)


class RelativePositionBias(nn.Module):
    """T5's learned bias per (bucketed key - query offset, head), shared by a stack's layers."""

    config: T5Config
    bidirectional: bool
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, query_positions: Array, key_positions: Array) -> Array:
        """[Q], [K] int -> additive bias [1, H, Q, K]"""
        cfg = self.config
        table = self.param(
            "embedding",
            nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, "heads")),
            (cfg.relative_attention_num_buckets, cfg.num_heads),
            self.param_dtype,
        )
        buckets = relative_position_bucket(
            key_positions[None, :] - query_positions[:, None],
            self.bidirectional,
            cfg.relative_attention_num_buckets,
            cfg.relative_attention_max_distance,
        )
        return jnp.take(table.astype(jnp.float32), buckets, axis=0).transpose(2, 0, 1)[None]


class T5Attention(nn.Module):
    """Multi-head attention without scaling; self-attention may use the decode cache."""

    config: T5Config
    decode_mode: str | None = None
    max_decode_length: int = 0
    is_cross_attention: bool = False
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def _project(self, name: str, x: Array) -> Array:
        cfg = self.config
        return layers.DenseGeneral(
            (cfg.num_heads, cfg.d_kv),
            kernel_axes=("embed", "heads", "kv"),
            use_bias=False,
            name=name,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )(x)

    @nn.compact
    def __call__(
        self, x: Array, kv_inputs: Array | None, bias: Array, position: Array | None = None
    ) -> Array:
        """x [B, T, D], kv_inputs [B, S, D] (cross, not needed in step mode), bias -> [B, T, D].

        position: int32 scalar, where a "step" writes its key/value into the self-attention cache.
        """
        query = self._project("q", x)
        if self.is_cross_attention:
            key, value = self._cross_key_value(kv_inputs)
        else:
            key, value = self._project("k", x), self._project("v", x)
            key, value = layers.cached_key_value(
                self, key, value, self.decode_mode, self.max_decode_length, position
            )
        out = layers.dot_product_attention(
            query, key, value, bias=bias, heads_first_kv=self.decode_mode is not None
        )
        out = layers.constrain(out, ("act_batch", "act_length", "act_heads", None))
        return layers.DenseGeneral(
            self.config.d_model,
            axis=(-2, -1),
            kernel_axes=("heads", "kv", "embed"),
            use_bias=False,
            name="o",
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )(out)

    def _cross_key_value(self, kv_inputs: Array | None) -> tuple[Array, Array]:
        if self.decode_mode != "step":
            key, value = self._project("k", kv_inputs), self._project("v", kv_inputs)
            if self.decode_mode == "prefill":  # heads-first, as `layers.cached_key_value` keeps
                key, value = key.transpose(0, 2, 1, 3), value.transpose(0, 2, 1, 3)
                self.variable("cache", "cross_key", lambda: key)
                self.variable("cache", "cross_value", lambda: value)
            return key, value
        # The encoder output was projected once, at prefill, instead of once per token.
        return self.get_variable("cache", "cross_key"), self.get_variable("cache", "cross_value")


class T5FeedForward(nn.Module):
    """wo(act(wi_0 x) * wi_1 x) (gated) or wo(act(wi x)); no biases."""

    config: T5Config
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """[B, T, D] -> [B, T, D]"""
        cfg = self.config
        dense = dict(use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype)
        act = layers.activation(cfg.dense_act_fn)
        if cfg.is_gated_act:
            h = act(
                layers.DenseGeneral(cfg.d_ff, kernel_axes=("embed", "mlp"), name="wi_0", **dense)(x)
            )
            h = h * layers.DenseGeneral(
                cfg.d_ff, kernel_axes=("embed", "mlp"), name="wi_1", **dense
            )(x)
        else:
            h = act(
                layers.DenseGeneral(cfg.d_ff, kernel_axes=("embed", "mlp"), name="wi", **dense)(x)
            )
        h = layers.constrain(h, ("act_batch", "act_length", "act_mlp"))
        return layers.DenseGeneral(cfg.d_model, kernel_axes=("mlp", "embed"), name="wo", **dense)(h)


class T5Layer(nn.Module):
    """One encoder (no cross-attention) or decoder block; scan-compatible (carry, ...) -> (carry, None)."""

    config: T5Config
    is_decoder: bool = False
    decode_mode: str | None = None
    max_decode_length: int = 0
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        x: Array,
        self_bias: Array,
        encoder_hidden: Array | None,
        cross_bias: Array | None,
        position: Array | None,
    ):
        """x [B, T, D], self_bias [1|B, H, T, K], encoder_hidden [B, S, D] and cross_bias
        (decoder only), position (step) -> ([B, T, D], None)."""
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        attn = dict(decode_mode=self.decode_mode, max_decode_length=self.max_decode_length, **kw)
        norm = lambda name: layers.RMSNorm(cfg.layer_norm_epsilon, name=name, **kw)  # noqa: E731
        x = x + T5Attention(cfg, name="self_attention", **attn)(
            norm("self_attention_norm")(x), None, self_bias, position
        )
        if self.is_decoder:
            x = x + T5Attention(cfg, is_cross_attention=True, name="cross_attention", **attn)(
                norm("cross_attention_norm")(x), encoder_hidden, cross_bias
            )
        x = x + T5FeedForward(cfg, name="mlp", **kw)(norm("mlp_norm")(x))
        return layers.constrain(x, ("act_batch", "act_length", "act_embed")), None


class T5Stack(nn.Module):
    """Encoder or decoder stack: position bias, layers, final RMSNorm."""

    config: T5Config
    is_decoder: bool
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    scan_layers: bool = False
    remat_policy: str = "none"

    @nn.compact
    def __call__(
        self,
        x: Array,
        mask: Array | None,
        encoder_hidden: Array | None = None,
        encoder_mask: Array | None = None,
        decode_mode: str | None = None,
        max_decode_length: int = 0,
    ) -> Array:
        """x [B, T, D] embeddings, mask [B, T] (0 = pad) -> [B, T, D]."""
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        num_layers = cfg.num_decoder_layers if self.is_decoder else cfg.num_layers
        length = x.shape[1]
        position_bias = RelativePositionBias(
            cfg,
            bidirectional=not self.is_decoder,
            param_dtype=self.param_dtype,
            name="relative_attention_bias",
        )
        position = None
        if decode_mode == "step":
            max_decode_length = self.get_variable("cache", "max_length").shape[1]
            index = self.variable("cache", "position", jnp.zeros, (x.shape[0],), jnp.int32)
            position = index.value[0]
            key_positions = jnp.arange(max_decode_length)
            self_bias = position_bias(position[None], key_positions)
            self_bias = self_bias + jnp.where(
                key_positions <= position, 0.0, jnp.finfo(jnp.float32).min
            )
            index.value = index.value + 1
            encoder_mask = self.get_variable("cache", "encoder_mask")
        else:
            positions = jnp.arange(length)
            self_bias = position_bias(positions, positions)
            if self.is_decoder:
                self_bias = self_bias + layers.causal_mask_bias(length)
            if mask is not None:
                self_bias = self_bias + layers.padding_mask_bias(None, mask)
            if decode_mode == "prefill":
                self.variable(
                    "cache", "position", lambda: jnp.full((x.shape[0],), length, jnp.int32)
                )
                self.variable("cache", "encoder_mask", lambda: encoder_mask.astype(jnp.int32))
                # The cache length is static; a zero-size marker carries it into "step" calls.
                self.variable(
                    "cache",
                    "max_length",
                    lambda: jnp.zeros((x.shape[0], max_decode_length), jnp.int8),
                )
        cross_bias = None if encoder_mask is None else layers.padding_mask_bias(None, encoder_mask)

        layer = layers.stack_layers(
            T5Layer,
            num_layers=num_layers,
            scan=self.scan_layers,
            remat_policy=self.remat_policy,
            in_axes=(nn.broadcast,) * 4,
        )
        layer_kw = dict(
            is_decoder=self.is_decoder,
            decode_mode=decode_mode,
            max_decode_length=max_decode_length,
            **kw,
        )
        names = ["layers"] if self.scan_layers else [f"layers_{i}" for i in range(num_layers)]
        for name in names:  # one scanned stack, or the layers one by one
            x, _ = layer(cfg, name=name, **layer_kw)(
                x, self_bias, encoder_hidden, cross_bias, position
            )
        return layers.RMSNorm(cfg.layer_norm_epsilon, name="final_norm", **kw)(x)


class T5(nn.Module):
    """T5ForConditionalGeneration behind the `LanguageModel` interface (ib_jax/models/lm.py).

    The encoder reads `[soft prompt][instruction]` as embeddings; the decoder starts from
    `decoder_start_token_id` and is teacher-forced on `shift_right(labels)`.
    """

    config: T5Config
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    scan_layers: bool = False
    remat_policy: str = "none"

    # The projected encoder keys/values and mask, and the step counters, are equal across beams.
    BEAM_INVARIANT_CACHE = ("cross_key", "cross_value", "encoder_mask", "max_length", "position")

    def setup(self):
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        stack = dict(scan_layers=self.scan_layers, remat_policy=self.remat_policy, **kw)
        self.shared = layers.Embed(cfg.vocab_size, cfg.d_model, name="shared", **kw)
        self.encoder = T5Stack(cfg, is_decoder=False, name="encoder", **stack)
        self.decoder = T5Stack(cfg, is_decoder=True, name="decoder", **stack)
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
        return self.shared(ids)

    def encode_prompt(self, soft_prompt: Array, input_ids: Array, attention_mask: Array) -> Context:
        """soft_prompt [B, P, D], instruction [B, Li] -> {"encoder_hidden": [B, P + Li, D],
        "encoder_mask": [B, P + Li]}: the encoder over `[soft prompt][instruction]`."""
        embeds = self.embed(input_ids)
        embeds = jnp.concatenate([soft_prompt.astype(embeds.dtype), embeds], axis=1)
        mask = jnp.concatenate(
            [jnp.ones(soft_prompt.shape[:2], jnp.int32), attention_mask.astype(jnp.int32)], axis=1
        )
        embeds = layers.constrain(embeds, ("act_batch", "act_length", "act_embed"))
        return {"encoder_hidden": self.encoder(embeds, mask), "encoder_mask": mask}

    def target_logits(self, context: Context, labels: Array) -> Array:
        """labels [B, Lt] -> logits [B, Lt, V]: the decoder teacher-forced on shift_right(labels)."""
        cfg = self.config
        decoder_ids = shift_right(labels, cfg.decoder_start_token_id, cfg.pad_token_id)
        return self.decode(decoder_ids, context["encoder_hidden"], context["encoder_mask"])

    def prompt_logits(self, context: Context) -> Array:
        """-> [B, 1, V]: the distribution of the first target token (after the start token)."""
        start = self._start_ids(context["encoder_hidden"].shape[0])
        return self.decode(start, context["encoder_hidden"], context["encoder_mask"])

    def prefill(
        self, soft_prompt: Array, input_ids: Array, attention_mask: Array, max_new_tokens: int
    ) -> Prefill:
        """Encode the prompt and run the start token (apply with mutable=["cache"]); the cache
        holds the start token and `max_new_tokens - 1` further `step` tokens."""
        context = self.encode_prompt(soft_prompt, input_ids, attention_mask)
        start = self._start_ids(soft_prompt.shape[0])
        encoded = (context["encoder_hidden"], context["encoder_mask"])
        logits = self.decode(
            start, *encoded, decode_mode="prefill", max_decode_length=max_new_tokens
        )
        return Prefill(logits=logits, seen_ids=start, seen_mask=jnp.ones_like(start))

    def step(self, token_ids: Array) -> Array:
        """[B, 1] -> [B, 1, V] (apply with mutable=["cache"])."""
        return self.decode(token_ids, None, None, decode_mode="step")

    def decode(
        self,
        decoder_input_ids: Array,
        encoder_hidden: Array | None,
        encoder_mask: Array | None,
        decode_mode: str | None = None,
        max_decode_length: int = 0,
    ) -> Array:
        """Decoder ids [B, T] -> logits [B, T, vocab] (float32); see the module docstring for the
        decode modes (encoder inputs are not needed in "step")."""
        x = self.decoder(
            self.shared(decoder_input_ids),
            None,
            encoder_hidden,
            encoder_mask,
            decode_mode=decode_mode,
            max_decode_length=max_decode_length,
        )
        if self.config.scale_decoder_outputs:
            x = x * (self.config.d_model**-0.5)
        logits = self.shared.attend(x) if self.config.tie_word_embeddings else self.lm_head(x)
        return layers.constrain(
            logits.astype(jnp.float32), ("act_batch", "act_length", "act_vocab")
        )

    def _start_ids(self, batch: int) -> Array:
        return jnp.full((batch, 1), self.config.decoder_start_token_id, jnp.int32)


def shift_right(labels: Array, decoder_start_token_id: int, pad_token_id: int) -> Array:
    """Teacher-forcing inputs from labels [B, T]: [start, y0, ..., y_{T-2}], IGNORE_INDEX -> pad."""
    shifted = jnp.concatenate(
        [jnp.full_like(labels[:, :1], decoder_start_token_id), labels[:, :-1]], axis=1
    )
    return jnp.where(shifted == IGNORE_INDEX, pad_token_id, shifted)
