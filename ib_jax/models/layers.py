"""Shared building blocks: one Dense and one Embed with logical axes, norms, the attention core.

Every parameter is created through `nn.with_logical_partitioning`, so the mapping from logical axis
names to mesh axes lives in the config (see `ib_jax/sharding.py`), never in the modules.

Logical axis vocabulary (t5x-style):
  parameters:  embed, mlp, heads, kv, vocab, qkv (the fused q/k/v axis), layers (scanned stacks)
  activations: act_batch, act_length, act_embed, act_heads, act_mlp, act_vocab
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ib_jax.models import lora

Array = jax.Array
DType = Any
Axes = tuple[str | None, ...]


def fan_in_init(num_contracted: int, num_out: int) -> Callable:
    """LeCun-normal over a kernel whose first `num_contracted` dims are the inputs: activations keep
    unit scale through every Dense, whatever the head layout (matters only when training from scratch)."""
    return nn.initializers.variance_scaling(
        1.0,
        "fan_in",
        "truncated_normal",
        in_axis=tuple(range(num_contracted)),
        out_axis=tuple(range(num_contracted, num_contracted + num_out)),
    )


# Exact-erf GELU is what the released checkpoints use ("gelu" in HF); flax's default is tanh.
ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


def activation(name: str) -> Callable[[Array], Array]:
    """The elementwise activation called `name` in HF configs (`hidden_act`, `dense_act_fn`)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; known: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def canonicalize_dtype(name: str | DType) -> DType:
    """A config's dtype name ("bfloat16") or dtype -> the jnp dtype."""
    return jnp.dtype(name) if isinstance(name, str) else name


def constrain(x: Array, axes: Axes) -> Array:
    """Sharding constraint on an activation by logical names (no-op outside a mesh)."""
    return nn.with_logical_constraint(x, axes)


class DenseGeneral(nn.Module):
    """The one Dense of the project: contracts `axis` of the input, produces `features`.

    `kernel_axes` names every kernel dimension (contracted input dims first, then output dims);
    `bias_axes` the output dims. Parameters are stored in `param_dtype` and cast to `dtype`;
    `out_dtype` (default `dtype`) is the matmul's accumulation/output type: float32 for the LM
    heads, so that bf16 logits are never rounded before the fp32 log-softmax. Where
    `config.model.lora` targets this Dense, a low-rank branch is added (ib_jax/models/lora.py).
    """

    features: int | Sequence[int]
    kernel_axes: Axes
    axis: int | Sequence[int] = -1
    use_bias: bool = True
    bias_axes: Axes | None = None
    dtype: DType = jnp.float32
    param_dtype: DType = jnp.float32
    kernel_init: Callable | None = None  # default: fan_in_init
    precision: Any = None
    out_dtype: DType | None = None

    @nn.compact
    def __call__(self, inputs: Array) -> Array:
        """inputs [..., *in] (contracted over `axis`) -> [..., *features]."""
        features = (self.features,) if isinstance(self.features, int) else tuple(self.features)
        axis = (self.axis,) if isinstance(self.axis, int) else tuple(self.axis)
        axis = tuple(a % inputs.ndim for a in axis)
        in_shape = tuple(inputs.shape[a] for a in axis)
        if len(self.kernel_axes) != len(in_shape) + len(features):
            raise ValueError(
                f"kernel_axes {self.kernel_axes} do not match kernel rank {len(in_shape) + len(features)}"
            )
        kernel_init = self.kernel_init or fan_in_init(len(in_shape), len(features))
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(kernel_init, self.kernel_axes),
            in_shape + features,
            self.param_dtype,
        )
        kernel = jnp.asarray(kernel, self.dtype)
        inputs = jnp.asarray(inputs, self.dtype)
        contract = (axis, tuple(range(len(axis))))
        out = jax.lax.dot_general(
            inputs,
            kernel,
            (contract, ((), ())),
            precision=self.precision,
            preferred_element_type=self.out_dtype,
        )
        if self.use_bias:
            bias_axes = (
                self.bias_axes if self.bias_axes is not None else self.kernel_axes[len(in_shape) :]
            )
            bias = self.param(
                "bias",
                nn.with_logical_partitioning(nn.initializers.zeros, bias_axes),
                features,
                self.param_dtype,
            )
            out = out + jnp.asarray(bias, out.dtype)
        adapter = lora.settings(self)  # (rank, scaling, dropout) where config.model.lora targets us
        if adapter is not None:
            out = out + lora.branch(self, inputs, axis, features, self.kernel_axes, *adapter)
        return out


class Embed(nn.Module):
    """Token embedding table `[vocab, embed]`; `attend` gives logits against it (tied heads)."""

    num_embeddings: int
    features: int
    axes: Axes = ("vocab", "embed")
    dtype: DType = jnp.float32
    param_dtype: DType = jnp.float32
    embedding_init: Callable = nn.initializers.normal(stddev=1.0)

    def setup(self):
        self.embedding = self.param(
            "embedding",
            nn.with_logical_partitioning(self.embedding_init, self.axes),
            (self.num_embeddings, self.features),
            self.param_dtype,
        )

    def __call__(self, ids: Array) -> Array:
        """[...] int -> [..., D]"""
        return jnp.take(jnp.asarray(self.embedding, self.dtype), ids, axis=0)

    def attend(self, hidden: Array) -> Array:
        """[..., D] -> [..., vocab] float32 (bf16 inputs, fp32 accumulation and output)"""
        embedding = jnp.asarray(self.embedding, self.dtype)
        return jnp.einsum("...d,vd->...v", hidden, embedding, preferred_element_type=jnp.float32)


class LayerNorm(nn.Module):
    """LayerNorm computed in float32 (scale and bias over the last axis)."""

    epsilon: float = 1e-6
    dtype: DType = jnp.float32
    param_dtype: DType = jnp.float32
    axis_name: str = "embed"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """[..., D] -> [..., D], normalized over the last axis."""
        features = x.shape[-1]
        scale = self.param(
            "scale",
            nn.with_logical_partitioning(nn.initializers.ones, (self.axis_name,)),
            (features,),
            self.param_dtype,
        )
        bias = self.param(
            "bias",
            nn.with_logical_partitioning(nn.initializers.zeros, (self.axis_name,)),
            (features,),
            self.param_dtype,
        )
        x32 = x.astype(jnp.float32)
        mean = x32.mean(-1, keepdims=True)
        var = jnp.square(x32 - mean).mean(-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.epsilon)
        y = y * scale.astype(jnp.float32) + bias.astype(jnp.float32)
        return y.astype(self.dtype)


class RMSNorm(nn.Module):
    """RMSNorm as in T5 and LLaMA: variance in float32, no mean subtraction, no bias."""

    epsilon: float = 1e-6
    dtype: DType = jnp.float32
    param_dtype: DType = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """[..., D] -> [..., D]: x / rms(x) * scale, computed in float32."""
        scale = self.param(
            "scale",
            nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
            (x.shape[-1],),
            self.param_dtype,
        )
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.epsilon)
        return (y * scale.astype(jnp.float32)).astype(self.dtype)


def padding_mask_bias(
    query_mask: Array | None, key_mask: Array, dtype: DType = jnp.float32
) -> Array:
    """Additive attention bias from 0/1 masks. key_mask [B, K] (query_mask [B, Q] unused) -> [B, 1, 1, K]."""
    del (
        query_mask
    )  # Queries at padded positions still attend; their outputs are ignored downstream.
    big_neg = jnp.finfo(dtype).min
    return jnp.where(key_mask[:, None, None, :] > 0, 0.0, big_neg).astype(dtype)


def causal_mask_bias(length: int, dtype: DType = jnp.float32) -> Array:
    """[1, 1, T, T] additive bias that hides future positions."""
    causal = np.tril(np.ones((length, length), dtype=bool))
    return jnp.where(causal, 0.0, jnp.finfo(dtype).min).astype(dtype)[None, None]


def dot_product_attention(
    query: Array,
    key: Array,
    value: Array,
    bias: Array | None = None,
    scale: float | None = None,
    heads_first_kv: bool = False,
) -> Array:
    """The attention core shared by every model.

    query [B, Q, H, Dh], key/value [B, K, H, Dh], or [B, H, K, Dh] with `heads_first_kv` (the
    decode caches' layout, see `cached_key_value`); key/value heads may be fewer than query
    heads (grouped-query attention repeats them); bias broadcastable to [B, H, Q, K]
    -> [B, Q, H, Dh]. Logits and softmax run in float32.
    """
    head_axis = 1 if heads_first_kv else 2
    num_heads, num_kv_heads = query.shape[2], key.shape[head_axis]
    if num_kv_heads != num_heads:
        repeats = num_heads // num_kv_heads
        key = jnp.repeat(key, repeats, axis=head_axis)
        value = jnp.repeat(value, repeats, axis=head_axis)
    if scale is not None:
        query = query * jnp.asarray(scale, query.dtype)
    kv = "bhkd" if heads_first_kv else "bkhd"
    logits = jnp.einsum(f"bqhd,{kv}->bhqk", query, key, preferred_element_type=jnp.float32)
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    weights = jax.nn.softmax(logits, axis=-1).astype(value.dtype)
    return jnp.einsum(f"bhqk,{kv}->bqhd", weights, value)


def cached_key_value(
    module: nn.Module,
    key: Array,
    value: Array,
    decode_mode: str | None,
    max_decode_length: int,
    position: Array | None,
) -> tuple[Array, Array]:
    """The decode cache of a self-attention, shared by the T5 and LLaMA decoders.

    key/value [B, T, H, Dh]. Without a `decode_mode` they are returned as they are. "prefill"
    writes the T prompt positions at slot 0 and returns them (the prompt attends to itself);
    "step" writes one position at `position` and returns the whole cache (the caller masks the
    slots not written yet). Both return heads-first [B, H, T|max_decode_length, Dh]
    (`dot_product_attention(..., heads_first_kv=True)`): that is the layout the attention
    contracts over, and a cache kept as [B, L, H, Dh] was transposed whole at every step.
    """
    if decode_mode is None:
        return key, value
    key, value = key.transpose(0, 2, 1, 3), value.transpose(0, 2, 1, 3)
    batch, heads, _, head_dim = key.shape
    shape = (batch, heads, max_decode_length, head_dim)
    cached_key = module.variable("cache", "cached_key", jnp.zeros, shape, key.dtype)
    cached_value = module.variable("cache", "cached_value", jnp.zeros, shape, value.dtype)
    start = (0, 0, 0 if decode_mode == "prefill" else position, 0)
    cached_key.value = jax.lax.dynamic_update_slice(cached_key.value, key, start)
    cached_value.value = jax.lax.dynamic_update_slice(cached_value.value, value, start)
    if decode_mode == "prefill":
        return key, value
    return cached_key.value, cached_value.value


REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def stack_layers(
    layer_cls: type[nn.Module],
    *,
    num_layers: int,
    scan: bool,
    remat_policy: str,
    static_argnums: tuple[int, ...] = (),
    in_axes: tuple = (),
) -> type[nn.Module]:
    """Wrap a layer class for a stack: optional remat, optional `nn.scan` over a leading `layers` axis.

    The wrapped layer must have the signature `(carry, *broadcast_args) -> (carry, None)` when scanned.
    `in_axes` gives the scan in_axes of the non-carry arguments (normally `nn.broadcast`).
    """
    if remat_policy not in REMAT_POLICIES:
        raise ValueError(f"unknown remat_policy {remat_policy!r}; known: {sorted(REMAT_POLICIES)}")
    if remat_policy != "none":
        layer_cls = nn.remat(
            layer_cls,
            policy=REMAT_POLICIES[remat_policy],
            prevent_cse=not scan,
            static_argnums=static_argnums,
        )
    if scan:
        layer_cls = nn.scan(
            layer_cls,
            variable_axes={"params": 0, "cache": 1},  # cache leaves keep batch on axis 0
            split_rngs={"params": True, "dropout": True},
            in_axes=in_axes,
            length=num_layers,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
    return layer_cls
