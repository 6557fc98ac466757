"""EVA ViT image encoder with the semantics of HF `InstructBlipVisionModel` (LAVIS `visual_encoder`).

Patch embedding -> [CLS] + patches + learned positions -> pre-LN blocks (fused qkv with bias,
exact-erf GELU MLP) -> `post_layernorm` over the whole sequence (LAVIS `ln_vision`).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ib_jax.contract.model import VisionConfig
from ib_jax.models import layers

Array = jax.Array


def _torch_bicubic_matrix(in_size: int, out_size: int, a: float = -0.75) -> np.ndarray:
    """[out, in] matrix equal to torch's 1-D bicubic resize (align_corners=False, clamped borders)."""

    def cubic(x):
        x = abs(x)
        if x <= 1:
            return ((a + 2) * x - (a + 3)) * x * x + 1
        if x < 2:
            return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
        return 0.0

    scale = in_size / out_size
    matrix = np.zeros((out_size, in_size), np.float64)
    for i in range(out_size):
        src = (i + 0.5) * scale - 0.5
        base = int(np.floor(src))
        t = src - base
        for offset in range(-1, 3):
            index = min(max(base + offset, 0), in_size - 1)
            matrix[i, index] += cubic(offset - t)
    return matrix


def interpolate_position_embedding(pos: Array, grid_h: int, grid_w: int) -> Array:
    """[1 + N*N, D] learned positions -> [1 + grid_h*grid_w, D], torch-bicubic on the patch grid."""
    old = int(round((pos.shape[0] - 1) ** 0.5))
    if (old, old) == (grid_h, grid_w):
        return pos
    patch_pos = pos[1:].reshape(old, old, -1).astype(jnp.float32)
    rows = jnp.asarray(_torch_bicubic_matrix(old, grid_h), jnp.float32)
    cols = jnp.asarray(_torch_bicubic_matrix(old, grid_w), jnp.float32)
    resized = jnp.einsum(
        "ih,hwd,jw->ijd", rows, patch_pos, cols, precision=jax.lax.Precision.HIGHEST
    )
    return jnp.concatenate(
        [pos[:1], resized.reshape(grid_h * grid_w, -1).astype(pos.dtype)], axis=0
    )


class VisionEmbeddings(nn.Module):
    """Patch embedding (a strided conv as a matmul), [CLS], and position embeddings interpolated
    to the image's grid."""

    config: VisionConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, pixel_values: Array) -> Array:
        """[B, H, W, 3] -> [B, 1 + (H/p)*(W/p), D]"""
        cfg, p = self.config, self.config.patch_size
        batch, height, width, channels = pixel_values.shape
        grid_h, grid_w = height // p, width // p
        patches = pixel_values[:, : grid_h * p, : grid_w * p]
        patches = patches.reshape(batch, grid_h, p, grid_w, p, channels).transpose(0, 1, 3, 2, 4, 5)
        # A stride-p convolution is a Dense over each (p, p, 3) patch.
        patch_embeds = layers.DenseGeneral(
            cfg.hidden_size,
            axis=(-3, -2, -1),
            kernel_axes=(None, None, None, "embed"),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="patch_embedding",
        )(patches)
        patch_embeds = patch_embeds.reshape(batch, grid_h * grid_w, cfg.hidden_size)
        num_positions = (cfg.image_size // p) ** 2 + 1
        class_embedding = self.param(
            "class_embedding",
            nn.with_logical_partitioning(nn.initializers.normal(0.02), ("embed",)),
            (cfg.hidden_size,),
            self.param_dtype,
        )
        position_embedding = self.param(
            "position_embedding",
            nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, "embed")),
            (num_positions, cfg.hidden_size),
            self.param_dtype,
        )
        cls = jnp.broadcast_to(class_embedding.astype(self.dtype), (batch, 1, cfg.hidden_size))
        embeddings = jnp.concatenate([cls, patch_embeds], axis=1)
        positions = interpolate_position_embedding(position_embedding, grid_h, grid_w)
        return embeddings + positions.astype(self.dtype)[None]


class VisionAttention(nn.Module):
    """Multi-head self-attention with a fused qkv projection; its bias holds HF's
    cat(q_bias, 0, v_bias) (no key bias)."""

    config: VisionConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """[B, T, D] -> [B, T, D]; bidirectional, no mask."""
        cfg = self.config
        head_dim = cfg.hidden_size // cfg.num_heads
        dense = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        qkv = layers.DenseGeneral(
            (3, cfg.num_heads, head_dim),
            kernel_axes=("embed", "qkv", "heads", "kv"),
            name="qkv",
            **dense,
        )(x)
        query, key, value = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        out = layers.dot_product_attention(query, key, value, scale=head_dim**-0.5)
        out = layers.constrain(out, ("act_batch", "act_length", "act_heads", None))
        return layers.DenseGeneral(
            cfg.hidden_size,
            axis=(-2, -1),
            kernel_axes=("heads", "kv", "embed"),
            name="projection",
            **dense,
        )(out)


class VisionMlp(nn.Module):
    """fc2(act(fc1 x)) with biases."""

    config: VisionConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """[B, T, D] -> [B, T, D]"""
        cfg = self.config
        dense = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = layers.DenseGeneral(
            cfg.intermediate_size, kernel_axes=("embed", "mlp"), name="fc1", **dense
        )(x)
        h = layers.activation(cfg.hidden_act)(h)
        h = layers.constrain(h, ("act_batch", "act_length", "act_mlp"))
        return layers.DenseGeneral(
            cfg.hidden_size, kernel_axes=("mlp", "embed"), name="fc2", **dense
        )(h)


class VisionLayer(nn.Module):
    """Pre-LN transformer block. Scan-compatible: (carry, _) -> (carry, None)."""

    config: VisionConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, _unused=None):
        """[B, T, D] -> ([B, T, D], None)"""
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = x + VisionAttention(cfg, name="self_attn", **kw)(
            layers.LayerNorm(cfg.layer_norm_eps, name="layer_norm1", **kw)(x)
        )
        x = x + VisionMlp(cfg, name="mlp", **kw)(
            layers.LayerNorm(cfg.layer_norm_eps, name="layer_norm2", **kw)(x)
        )
        return layers.constrain(x, ("act_batch", "act_length", "act_embed")), None


class VisionTransformer(nn.Module):
    """[B, H, W, 3] normalized pixels -> image embeddings [B, 1 + patches, D] (after ln_vision)."""

    config: VisionConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    scan_layers: bool = False
    remat_policy: str = "none"

    @nn.compact
    def __call__(self, pixel_values: Array) -> Array:
        """[B, H, W, 3] -> [B, 1 + patches, D]"""
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = VisionEmbeddings(cfg, name="embeddings", **kw)(pixel_values.astype(self.dtype))
        layer = layers.stack_layers(
            VisionLayer,
            num_layers=cfg.num_layers,
            scan=self.scan_layers,
            remat_policy=self.remat_policy,
            in_axes=(nn.broadcast,),
        )
        if self.scan_layers:
            x, _ = layer(cfg, name="layers", **kw)(x, None)
        else:
            for i in range(cfg.num_layers):
                x, _ = layer(cfg, name=f"layers_{i}", **kw)(x, None)
        return layers.LayerNorm(cfg.layer_norm_eps, name="post_layernorm", **kw)(x)
