"""Analytic model FLOPs of an InstructBLIP training step (matmuls and attention; 2 per MAC).

With frozen towers the backward pass does less than 2x the forward: the ViT, ahead of every
trainable parameter, has no backward at all; the frozen LM needs input gradients (1x its forward)
but no weight gradients; the trainable Q-Former and projection need both (2x).
"""

from __future__ import annotations

import dataclasses

import ml_collections

from ib_jax.contract.model import ModelConfig
from ib_jax.models import families


@dataclasses.dataclass(frozen=True)
class Shapes:
    """The padded sizes of one global batch that the FLOP count depends on.

    `pixel_values` are [batch, num_frames, image_size, image_size, 3] (one frame for images),
    Q-Former instructions [batch, qformer_len], LM inputs [batch, text_len], targets
    [batch, target_len].
    """

    batch: int
    image_size: int
    qformer_len: int
    text_len: int
    target_len: int
    num_frames: int = 1

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> Shapes:
        """The training batch of a run config (`config.data`: fixed padded lengths, images)."""
        d = config.data
        return cls(
            d.global_batch_size, d.image_size, d.qformer_max_len, d.text_max_len, d.target_max_len
        )

    @property
    def tokens(self) -> int:
        """Text tokens per batch (Q-Former instruction + LM input + target), for tokens/s."""
        return self.batch * (self.qformer_len + self.text_len + self.target_len)


def vision_forward(cfg: ModelConfig, s: Shapes) -> float:
    """FLOPs of the ViT on one example: patch embedding and every layer, per frame."""
    v = cfg.vision
    tokens = (s.image_size // v.patch_size) ** 2 + 1
    per_layer = 2 * tokens * (4 * v.hidden_size**2 + 2 * v.hidden_size * v.intermediate_size)
    per_layer += 4 * tokens**2 * v.hidden_size
    patch = 2 * (tokens - 1) * 3 * v.patch_size**2 * v.hidden_size
    return s.num_frames * (v.num_layers * per_layer + patch)


def qformer_forward(cfg: ModelConfig, s: Shapes) -> float:
    """FLOPs of the Q-Former and the language projection on one example, per frame.

    Queries and instruction tokens share self-attention; only the queries cross-attend to the
    image (every `cross_attention_frequency` layers) and go through the query feed-forward.
    """
    q, nq = cfg.qformer, cfg.num_query_tokens
    d, f = q.hidden_size, q.intermediate_size
    text = s.qformer_len if cfg.instruction_aware else 0
    image_tokens = (s.image_size // cfg.vision.patch_size) ** 2 + 1
    total = 0.0
    for layer in range(q.num_layers):
        n = nq + text
        total += 2 * n * 4 * d * d + 4 * n * n * d  # self-attention
        total += 2 * nq * 2 * d * f + 2 * text * 2 * d * f  # query / text feed-forward
        if layer % q.cross_attention_frequency == 0:
            total += 2 * nq * 2 * d * d + 2 * image_tokens * 2 * d * q.encoder_hidden_size
            total += 4 * nq * image_tokens * d
    projection = 2 * nq * d * _lm_width(cfg)
    return s.num_frames * (total + projection)


def _lm_width(cfg: ModelConfig) -> int:
    return families.family_of(cfg.text).width(cfg.text)


def lm_forward(cfg: ModelConfig, s: Shapes) -> float:
    """The language model over `[soft prompt][instruction][target]` (its family's accounting)."""
    prefix_len = s.num_frames * cfg.num_query_tokens
    lm = families.family_of(cfg.text)
    return lm.forward_flops(cfg.text, prefix_len, s.text_len, s.target_len)


def train_step_flops(cfg: ModelConfig, s: Shapes) -> float:
    """FLOPs of one training step on a batch (frozen ViT and LM, trainable Q-Former/projection).

    Remat recomputation is not counted, as MFU conventionally does."""
    return s.batch * (vision_forward(cfg, s) + 3 * qformer_forward(cfg, s) + 2 * lm_forward(cfg, s))


def forward_flops(cfg: ModelConfig, s: Shapes) -> float:
    """FLOPs of one forward pass over the batch (evaluation, scoring)."""
    return s.batch * (vision_forward(cfg, s) + qformer_forward(cfg, s) + lm_forward(cfg, s))


# Dense bf16 peak per chip, for the MFU estimate on accelerators (CPU peaks must be measured).
PEAK_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
    "NVIDIA H100": 989e12,
    "NVIDIA H200": 989e12,
    "NVIDIA A100": 312e12,
}


def device_peak_flops(device_kind: str, configured: float = 0.0) -> float | None:
    """Peak FLOP/s of one device: `configured` if set, else PEAK_FLOPS by device kind, else None."""
    if configured:
        return configured
    for name, peak in PEAK_FLOPS.items():
        if device_kind.startswith(name):
            return peak
    return None
