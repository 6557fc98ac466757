"""The numerical reference: tiny Hugging Face InstructBLIP models (PyTorch, CPU), fully re-randomized.

HF's default initialisation is degenerate for a parity test (vision std 1e-10, query tokens 0, tied
heads), so every parameter is redrawn and the lm_head is untied before `save_pretrained`.
"""

from __future__ import annotations

import numpy as np
import torch

IMAGE_TOKEN = 127
NUM_QUERY_TOKENS = 4


def tiny_config(text: str = "t5", **text_overrides):
    from transformers import InstructBlipConfig

    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=28,
        patch_size=14,
    )
    qformer = dict(
        vocab_size=100,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=4,
        num_attention_heads=4,
        max_position_embeddings=64,
        cross_attention_frequency=2,
    )
    if text == "t5":
        text_config = dict(
            model_type="t5",
            vocab_size=128,
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_decoder_layers=2,
            num_heads=4,
            feed_forward_proj="gated-gelu",
            tie_word_embeddings=False,
            relative_attention_num_buckets=8,
            relative_attention_max_distance=16,
            decoder_start_token_id=0,
        )
    else:
        text_config = dict(
            model_type="llama",
            vocab_size=128,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            tie_word_embeddings=False,
            bos_token_id=2,
            eos_token_id=2,
            pad_token_id=0,
            rope_parameters=dict(rope_type="default", rope_theta=500.0),
        )
    text_config.update(text_overrides)
    return InstructBlipConfig(
        vision_config=vision,
        qformer_config=qformer,
        text_config=text_config,
        num_query_tokens=NUM_QUERY_TOKENS,
        image_token_index=IMAGE_TOKEN,
    )


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Redraw every parameter: norms around 1, everything else N(0, 0.2^2); untie the LM head."""
    generator = torch.Generator().manual_seed(seed)
    lm = model.language_model
    if hasattr(lm, "lm_head") and lm.lm_head.weight is lm.get_input_embeddings().weight:
        lm.lm_head.weight = torch.nn.Parameter(lm.lm_head.weight.detach().clone())
        if hasattr(lm.config, "tie_word_embeddings"):
            lm.config.tie_word_embeddings = False
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            is_norm_scale = ("norm" in name.lower()) and name.endswith("weight")
            param.copy_(1.0 + 0.1 * noise if is_norm_scale else 0.2 * noise)
    return model.eval()


def build(text: str = "t5", seed: int = 0, **text_overrides):
    from transformers import InstructBlipForConditionalGeneration

    torch.manual_seed(seed)
    config = tiny_config(text, **text_overrides)
    config._attn_implementation = "eager"
    model = InstructBlipForConditionalGeneration(config)
    return randomize_(model, seed)


def inputs(seed: int = 0, batch: int = 2, image_size: int = 28) -> dict[str, np.ndarray]:
    """Our batch (no image placeholders), padded: the second example is shorter everywhere."""
    rng = np.random.default_rng(seed)
    qformer_ids = rng.integers(1, 100, (batch, 6)).astype(np.int32)
    qformer_mask = np.ones((batch, 6), np.int32)
    input_ids = rng.integers(3, 120, (batch, 7)).astype(np.int32)
    mask = np.ones((batch, 7), np.int32)
    labels = rng.integers(3, 120, (batch, 5)).astype(np.int32)
    for b in range(1, batch):
        qformer_mask[b, -2:], qformer_ids[b, -2:] = 0, 0
        mask[b, -3:], input_ids[b, -3:] = 0, 0
        labels[b, -2:] = -100
    return {
        "pixel_values": rng.normal(size=(batch, image_size, image_size, 3)).astype(np.float32),
        "qformer_input_ids": qformer_ids,
        "qformer_attention_mask": qformer_mask,
        "input_ids": input_ids,
        "attention_mask": mask,
        "labels": labels,
    }


def to_hf(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Our batch -> HF kwargs: NCHW pixels and NUM_QUERY_TOKENS `<image>` placeholders in front."""
    size = batch["input_ids"].shape[0]
    placeholders = np.full((size, NUM_QUERY_TOKENS), IMAGE_TOKEN, np.int64)
    out = {
        "pixel_values": torch.from_numpy(batch["pixel_values"].transpose(0, 3, 1, 2).copy()),
        "qformer_input_ids": torch.from_numpy(batch["qformer_input_ids"].astype(np.int64)),
        "qformer_attention_mask": torch.from_numpy(
            batch["qformer_attention_mask"].astype(np.int64)
        ),
        "input_ids": torch.from_numpy(np.concatenate([placeholders, batch["input_ids"]], 1)),
        "attention_mask": torch.from_numpy(
            np.concatenate([np.ones_like(placeholders), batch["attention_mask"]], 1)
        ),
    }
    if "labels" in batch:
        out["labels"] = torch.from_numpy(batch["labels"].astype(np.int64))
    return out
