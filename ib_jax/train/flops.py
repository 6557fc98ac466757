"""Analytic model FLOPs of an InstructBLIP training step (matmuls and attention; 2 per MAC).

With frozen towers the backward pass does less than 2x the forward: the ViT, ahead of every
trainable parameter, has no backward at all; the frozen LM needs input gradients (1x its forward)
but no weight gradients; the trainable Q-Former and projection need both (2x).
"""

from __future__ import annotations

import dataclasses

from ib_jax.models.configs import LlamaConfig, ModelConfig, T5Config


@dataclasses.dataclass(frozen=True)
class Shapes:
    batch: int
    image_size: int
    qformer_len: int
    text_len: int
    target_len: int
    num_frames: int = 1


def vision_forward(cfg: ModelConfig, s: Shapes) -> float:
    v = cfg.vision
    tokens = (s.image_size // v.patch_size) ** 2 + 1
    per_layer = 2 * tokens * (4 * v.hidden_size**2 + 2 * v.hidden_size * v.intermediate_size)
    per_layer += 4 * tokens**2 * v.hidden_size
    patch = 2 * (tokens - 1) * 3 * v.patch_size**2 * v.hidden_size
    return s.num_frames * (v.num_layers * per_layer + patch)


def qformer_forward(cfg: ModelConfig, s: Shapes) -> float:
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
    return cfg.text.d_model if isinstance(cfg.text, T5Config) else cfg.text.hidden_size


def t5_forward(t: T5Config, source_len: int, target_len: int) -> float:
    inner = t.num_heads * t.d_kv
    ffn = (3 if t.is_gated_act else 2) * t.d_model * t.d_ff
    encoder = t.num_layers * (
        2 * source_len * (4 * t.d_model * inner + ffn) + 4 * source_len**2 * inner
    )
    decoder = t.num_decoder_layers * (
        2 * target_len * (6 * t.d_model * inner + ffn)
        + 2 * source_len * 2 * t.d_model * inner
        + 4 * target_len**2 * inner
        + 4 * target_len * source_len * inner
    )
    return encoder + decoder + 2 * target_len * t.d_model * t.vocab_size


def llama_forward(text: LlamaConfig, prefix_len: int, text_len: int, target_len: int) -> float:
    """Vicuna over `[queries][instruction][target]`; the head runs on the target slots only."""
    seq, d, heads, kv_heads = (
        prefix_len + text_len + target_len,
        text.hidden_size,
        text.num_heads,
        text.num_kv_heads,
    )
    head_dim = d // heads
    projections = 2 * seq * d * head_dim * (2 * heads + 2 * kv_heads)  # q, o and k, v
    mlp = 2 * seq * 3 * d * text.intermediate_size  # SwiGLU: gate, up, down
    attention = 4 * seq * seq * heads * head_dim  # scores + weighted sum (dense mask)
    return text.num_layers * (projections + mlp + attention) + 2 * target_len * d * text.vocab_size


def lm_forward(cfg: ModelConfig, s: Shapes) -> float:
    prefix_len = s.num_frames * cfg.num_query_tokens
    if isinstance(cfg.text, T5Config):
        return t5_forward(cfg.text, prefix_len + s.text_len, s.target_len)
    return llama_forward(cfg.text, prefix_len, s.text_len, s.target_len)


def train_step_flops(cfg: ModelConfig, s: Shapes) -> float:
    """FLOPs of one training step on a batch (frozen ViT and LM, trainable Q-Former/projection).

    Remat recomputation is not counted, as MFU conventionally does."""
    return s.batch * (vision_forward(cfg, s) + 3 * qformer_forward(cfg, s) + 2 * lm_forward(cfg, s))


def forward_flops(cfg: ModelConfig, s: Shapes) -> float:
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
    if configured:
        return configured
    for name, peak in PEAK_FLOPS.items():
        if device_kind.startswith(name):
            return peak
    return None
