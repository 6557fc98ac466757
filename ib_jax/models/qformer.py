"""Instruction-aware Q-Former (HF `InstructBlipQFormerModel`, LAVIS `Qformer.bert`).

[query tokens; instruction tokens] -> LayerNorm -> BERT post-LN layers. Self-attention is
bidirectional over both parts with a padding mask; every `cross_attention_frequency`-th layer
(i % freq == 0) cross-attends to the image, for the query positions only; query positions use
their own feed-forward weights (`intermediate_query`/`output_query`). Output: the query rows.

Layers are grouped in blocks of `cross_attention_frequency` (the first with cross-attention) so
that the stack is homogeneous and can be scanned.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ib_jax.contract.model import QFormerConfig
from ib_jax.models import layers

Array = jax.Array


class QFormerAttention(nn.Module):
    """BERT attention + output (dense, residual, LayerNorm); keys/values from `kv_inputs`."""

    config: QFormerConfig
    is_cross_attention: bool = False
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, kv_inputs: Array, bias: Array | None) -> Array:
        """x [B, Q, D], kv_inputs [B, K, Dkv], bias [B, 1, Q|1, K] -> [B, Q, D]"""
        cfg = self.config
        head_dim = cfg.hidden_size // cfg.num_heads
        dense = dict(dtype=self.dtype, param_dtype=self.param_dtype)

        def heads(name, inputs, in_axis):
            return layers.DenseGeneral(
                (cfg.num_heads, head_dim), kernel_axes=(in_axis, "heads", "kv"), name=name, **dense
            )(inputs)

        query = heads("query", x, "embed")
        key, value = heads("key", kv_inputs, "embed"), heads("value", kv_inputs, "embed")
        out = layers.dot_product_attention(query, key, value, bias=bias, scale=head_dim**-0.5)
        out = layers.DenseGeneral(
            cfg.hidden_size,
            axis=(-2, -1),
            kernel_axes=("heads", "kv", "embed"),
            name="output_dense",
            **dense,
        )(out)
        return layers.LayerNorm(cfg.layer_norm_eps, name="output_layernorm", **dense)(out + x)


class QFormerFeedForward(nn.Module):
    """BERT intermediate + output: dense, GELU, dense, residual, LayerNorm."""

    config: QFormerConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """[B, T, D] -> [B, T, D]"""
        cfg = self.config
        dense = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = layers.DenseGeneral(
            cfg.intermediate_size, kernel_axes=("embed", "mlp"), name="intermediate", **dense
        )(x)
        h = layers.activation(cfg.hidden_act)(h)
        h = layers.DenseGeneral(
            cfg.hidden_size, kernel_axes=("mlp", "embed"), name="output", **dense
        )(h)
        return layers.LayerNorm(cfg.layer_norm_eps, name="output_layernorm", **dense)(h + x)


class QFormerLayer(nn.Module):
    """One BERT post-LN layer: self-attention over [queries; text], cross-attention to the image
    on the query slice only (when `has_cross_attention`), separate query / text feed-forwards."""

    config: QFormerConfig
    num_query_tokens: int
    has_cross_attention: bool
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, self_bias: Array, image_embeds: Array) -> Array:
        """x [B, NQ + T, D], self_bias [B, 1, 1, NQ + T], image_embeds [B, P, Dv] -> [B, NQ + T, D]"""
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        nq = self.num_query_tokens
        x = QFormerAttention(self.config, name="attention", **kw)(x, x, self_bias)
        queries, text = x[:, :nq], x[:, nq:]
        if self.has_cross_attention:
            queries = QFormerAttention(
                self.config, is_cross_attention=True, name="crossattention", **kw
            )(queries, image_embeds, None)
        queries = QFormerFeedForward(self.config, name="ffn_query", **kw)(queries)
        if text.shape[1]:
            text = QFormerFeedForward(self.config, name="ffn_text", **kw)(text)
            queries = jnp.concatenate([queries, text], axis=1)
        return layers.constrain(queries, ("act_batch", "act_length", "act_embed"))


class QFormerGroup(nn.Module):
    """`cross_attention_frequency` consecutive layers, the first with cross-attention."""

    config: QFormerConfig
    num_query_tokens: int
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, self_bias: Array, image_embeds: Array):
        """As QFormerLayer, scan-compatible: x [B, NQ + T, D] -> ([B, NQ + T, D], None)."""
        for j in range(self.config.cross_attention_frequency):
            x = QFormerLayer(
                self.config,
                self.num_query_tokens,
                has_cross_attention=(j == 0),
                name=f"layer_{j}",
                dtype=self.dtype,
                param_dtype=self.param_dtype,
            )(x, self_bias, image_embeds)
        return x, None


class QFormer(nn.Module):
    """Returns the query outputs [B, NQ, D] given image embeddings and (optionally) the instruction."""

    config: QFormerConfig
    num_query_tokens: int
    instruction_aware: bool = True
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    scan_layers: bool = False
    remat_policy: str = "none"

    @nn.compact
    def __call__(
        self, image_embeds: Array, input_ids: Array | None, attention_mask: Array | None
    ) -> Array:
        """image_embeds [B, P, Dv], input_ids/attention_mask [B, T] (None if not instruction-aware)."""
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        if cfg.num_layers % cfg.cross_attention_frequency:
            raise ValueError(
                f"Q-Former num_layers ({cfg.num_layers}) must be a multiple of "
                f"cross_attention_frequency ({cfg.cross_attention_frequency})"
            )
        batch = image_embeds.shape[0]
        query_tokens = self.param(
            "query_tokens",
            nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, "embed")),
            (self.num_query_tokens, cfg.hidden_size),
            self.param_dtype,
        )
        x = jnp.broadcast_to(
            query_tokens.astype(self.dtype), (batch, self.num_query_tokens, cfg.hidden_size)
        )
        mask = jnp.ones((batch, self.num_query_tokens), jnp.int32)
        if self.instruction_aware:
            if input_ids is None:
                raise ValueError("an instruction-aware Q-Former needs qformer_input_ids")
            if attention_mask is None:
                attention_mask = jnp.ones_like(input_ids)
            word = layers.Embed(cfg.vocab_size, cfg.hidden_size, name="word_embeddings", **kw)(
                input_ids
            )
            position = layers.Embed(
                cfg.max_position_embeddings,
                cfg.hidden_size,
                axes=(None, "embed"),
                name="position_embeddings",
                **kw,
            )(jnp.arange(input_ids.shape[1]))
            x = jnp.concatenate([x, word + position[None]], axis=1)
            mask = jnp.concatenate([mask, attention_mask.astype(jnp.int32)], axis=1)
        x = layers.LayerNorm(cfg.layer_norm_eps, name="embeddings_layernorm", **kw)(x)
        self_bias = layers.padding_mask_bias(None, mask)

        num_groups = cfg.num_layers // cfg.cross_attention_frequency
        group = layers.stack_layers(
            QFormerGroup,
            num_layers=num_groups,
            scan=self.scan_layers,
            remat_policy=self.remat_policy,
            in_axes=(nn.broadcast, nn.broadcast),
        )
        if self.scan_layers:
            x, _ = group(cfg, self.num_query_tokens, name="groups", **kw)(
                x, self_bias, image_embeds
            )
        else:
            for g in range(num_groups):
                x, _ = group(cfg, self.num_query_tokens, name=f"groups_{g}", **kw)(
                    x, self_bias, image_embeds
                )
        return x[:, : self.num_query_tokens]
