"""The benchmarks' PyTorch reference: HF transformers `InstructBlipForConditionalGeneration`.

Built from one of our `ModelConfig`s (so both sides have the same architecture by construction),
with every dropout 0 and an untied LM head, and initialised the way trained models look rather
than with HF's init (vision std 1e-10, zero query tokens) or the tests' N(0, 0.2^2) redraw (at
width 256 that makes the network chaotic: fp32 rounding differences grow layer by layer until the
two sides generate different tokens). `fan_in_init_` draws every matrix N(0, 1/fan_in), so each
layer keeps unit-scale activations, T5's query matrices also divided by sqrt(d_kv) (T5 does not
scale its attention logits; its own init folds the scale into q), norms near 1 and small biases.

The model is saved with `save_pretrained` and read by `ib_jax.load_pretrained` when both sides
must hold the same weights. The tests keep their own builder (tests/reference.py); the benchmarks
do not import from tests/.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ib_jax.contract.model import ModelConfig
from ib_jax.convert.export import hf_config as exported_config

IGNORE_INDEX = -100


def image_token(config: ModelConfig) -> int:
    """The `<image>` placeholder id HF needs in its LM vocabulary: the last id that is not pad.

    Benchmark token ids are drawn below it (benchmarks.common.make_batch's `max_token`)."""
    text = config.text
    last = text.vocab_size - 1
    return last - 1 if last == text.pad_token_id else last


def hf_config(config: ModelConfig):
    """Our ModelConfig -> an `InstructBlipConfig` with the same architecture, dropout 0.

    The exporter's `config.json` (`ib_jax.convert.export.hf_config`, the inverse of
    `model_config_from_hf`; tests/test_benchmarks.py checks the round trip) with dropout off, so
    both sides of a timed training step compute the same thing."""
    from transformers import InstructBlipConfig

    values = exported_config(config, "instructblip", image_token(config), "float32")
    values["vision_config"]["attention_dropout"] = 0.0
    values["qformer_config"].update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    values["text_config"].update(dropout_rate=0.0, attention_dropout=0.0)  # T5's, LLaMA's
    for key in ("architectures", "model_type", "dtype"):  # config.json bookkeeping
        values.pop(key)
    return InstructBlipConfig(**values)


def _init_std(name: str, shape: tuple[int, ...], d_kv: int | None) -> tuple[float, float]:
    """(mean, std) of one parameter under the trained-looking init (see the module docstring)."""
    lower = name.lower()
    if "norm" in lower:  # LayerNorm / RMSNorm: scale near 1, shift near 0
        return (1.0, 0.1) if name.endswith("weight") else (0.0, 0.02)
    if "relative_attention_bias" in name:  # [buckets, heads], added to the attention logits
        return 0.0, 0.5
    if len(shape) == 1:  # biases
        return 0.0, 0.02
    if "position_embedding" in lower or "class_embedding" in name:
        return 0.0, 0.1
    if name == "query_tokens" or any(k in name for k in ("shared", "embed_tokens", "word_embed")):
        return 0.0, 1.0  # token tables and queries: unit scale, as the first layer expects
    fan_in = math.prod(shape[1:])  # torch Linear [out, in], Conv2d [out, in, kh, kw]
    std = 1.0 / math.sqrt(fan_in)
    if d_kv and name.endswith(("SelfAttention.q.weight", "EncDecAttention.q.weight")):
        std /= math.sqrt(d_kv)
    return 0.0, std


def fan_in_init_(model, seed: int = 0):
    """Redraw every parameter of an HF InstructBLIP in place (see the module docstring); untie
    the LM head first. Draws on the parameters' own device, so a model built on a GPU stays there."""
    import torch

    lm = model.language_model
    if hasattr(lm, "lm_head") and lm.lm_head.weight is lm.get_input_embeddings().weight:
        lm.lm_head.weight = torch.nn.Parameter(lm.lm_head.weight.detach().clone())
    lm.config.tie_word_embeddings = False
    text = model.config.text_config
    d_kv = getattr(text, "d_kv", None) if text.model_type == "t5" else None
    with torch.no_grad():
        for index, (name, param) in enumerate(model.named_parameters()):
            generator = torch.Generator(device=param.device).manual_seed(seed * 100_003 + index)
            mean, std = _init_std(name, tuple(param.shape), d_kv)
            noise = torch.randn(
                param.shape, generator=generator, device=param.device, dtype=torch.float32
            )
            param.copy_((mean + std * noise).to(param.dtype))
    return model.eval()


def build(config: ModelConfig, seed: int = 0, device: str = "cpu"):
    """The HF model for `config`, fp32, on `device`, initialised by `fan_in_init_`, eval mode."""
    import torch
    from transformers import InstructBlipForConditionalGeneration

    torch.manual_seed(seed)
    # Parameters are allocated (and HF's own init runs) on the device: at the released sizes a
    # CPU init of 4-14 B parameters would take minutes.
    with torch.device(device):
        model = InstructBlipForConditionalGeneration(hf_config(config))
    return fan_in_init_(model, seed)


def trainable_parameters(model) -> list:
    """Freeze the ViT (all but its post_layernorm, LAVIS's ln_vision) and the LM, as ours does;
    the rest (query tokens, Q-Former, projection) trains. Returns the trainable parameters."""
    for p in model.parameters():
        p.requires_grad_(True)
    for p in model.vision_model.parameters():
        p.requires_grad_(False)
    for p in model.vision_model.post_layernorm.parameters():
        p.requires_grad_(True)
    for p in model.language_model.parameters():
        p.requires_grad_(False)
    return [p for p in model.parameters() if p.requires_grad]


def cast_frozen_towers_(model, dtype) -> None:
    """Frozen towers stored in `dtype` (bf16 on accelerators); the trainable parts stay fp32."""
    model.vision_model.to(dtype)
    model.vision_model.post_layernorm.float()
    model.language_model.to(dtype)


def to_hf(
    batch: dict[str, np.ndarray], config: ModelConfig, *, labels: bool = True, device: str = "cpu"
) -> dict[str, Any]:
    """Our batch -> HF kwargs: NCHW pixels, `num_query_tokens` `<image>` placeholders in front.

    T5: labels are the decoder targets. Decoder-only: the LM sequence is LAVIS's
    `[<image>...][instruction][target][pads]` with labels on the target only (HF shifts them),
    which is what our `forward_with_prefix` computes for unpadded instructions."""
    import torch

    b = batch["input_ids"].shape[0]
    placeholders = np.full((b, config.num_query_tokens), image_token(config), np.int64)
    ids = np.concatenate([placeholders, batch["input_ids"]], 1).astype(np.int64)
    mask = np.concatenate([np.ones_like(placeholders), batch["attention_mask"]], 1).astype(np.int64)
    out = {
        "pixel_values": batch["pixel_values"].transpose(0, 3, 1, 2),
        "qformer_input_ids": batch["qformer_input_ids"].astype(np.int64),
        "qformer_attention_mask": batch["qformer_attention_mask"].astype(np.int64),
    }
    if labels and config.lm_type != "t5":
        target = batch["labels"].astype(np.int64)
        valid = target != IGNORE_INDEX
        ids = np.concatenate([ids, np.where(valid, target, config.text.pad_token_id)], 1)
        mask = np.concatenate([mask, valid.astype(np.int64)], 1)
        out["labels"] = np.concatenate(
            [np.full_like(placeholders, IGNORE_INDEX), _ignore_all(batch["input_ids"]), target], 1
        )
    elif labels:
        out["labels"] = batch["labels"].astype(np.int64)
    out["input_ids"], out["attention_mask"] = ids, mask
    return {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in out.items()}


def _ignore_all(x: np.ndarray) -> np.ndarray:
    return np.full(x.shape, IGNORE_INDEX, np.int64)


def new_tokens(model, generated, prompt_length: int):
    """The new tokens of HF's `generate` output: T5 returns [start][new], decoder-only models
    [prompt][new]. -> [B, N] numpy."""
    cut = 1 if model.config.text_config.model_type == "t5" else prompt_length
    return generated[:, cut:].cpu().numpy()


def score_candidates(model, inputs: dict[str, Any], candidates, chunk_size: int = 0):
    """LAVIS's candidate ranking on the HF model: the image and instruction are encoded once per
    example, then the LM scores every candidate teacher-forced, `chunk_size` candidates per pass.

    inputs: `to_hf(..., labels=False)`; candidates [B, C, L] torch int64 (ids + EOS, -100 pads).
    Returns [B, C] float32 summed log-probabilities (the same quantity as
    `ib_jax.eval.ranking.score_candidates` without length normalisation)."""
    import torch

    batch, num, length = candidates.shape
    chunk_size = chunk_size or num
    features = model.get_image_features(
        inputs["pixel_values"],
        qformer_input_ids=inputs["qformer_input_ids"],
        qformer_attention_mask=inputs["qformer_attention_mask"],
        return_dict=True,
    ).pooler_output
    embed = model.get_input_embeddings()
    prompt = embed(inputs["input_ids"])
    placeholder = (inputs["input_ids"] == model.config.image_token_index).unsqueeze(-1)
    prompt = prompt.masked_scatter(placeholder, features.to(prompt.dtype))
    mask = inputs["attention_mask"]
    lm = model.language_model
    t5 = model.config.text_config.model_type == "t5"
    if t5:
        context = lm.encoder(inputs_embeds=prompt, attention_mask=mask).last_hidden_state
    scores = []
    for start in range(0, num, chunk_size):
        labels = candidates[:, start : start + chunk_size]
        c = labels.shape[1]
        flat = labels.reshape(batch * c, length)
        valid = flat != IGNORE_INDEX
        rep_mask = mask.repeat_interleave(c, 0)
        if t5:
            logits = lm(
                encoder_outputs=(context.repeat_interleave(c, 0),),
                attention_mask=rep_mask,
                decoder_input_ids=lm._shift_right(flat),
            ).logits
        else:
            pad = model.config.text_config.pad_token_id
            tokens = embed(torch.where(valid, flat, pad))
            seq = torch.cat([prompt.repeat_interleave(c, 0), tokens], 1)
            full_mask = torch.cat([rep_mask, valid.long()], 1)
            # The prompt is unpadded (make_batch), so candidate token j sits at P + j and is
            # predicted from position P + j - 1.
            logits = lm(inputs_embeds=seq, attention_mask=full_mask).logits
            p = prompt.shape[1]
            logits = logits[:, p - 1 : p - 1 + length]
        log_probs = torch.log_softmax(logits.float(), -1)
        picked = log_probs.gather(-1, torch.where(valid, flat, 0).unsqueeze(-1))[..., 0]
        scores.append((picked * valid).sum(-1).reshape(batch, c))
    return torch.cat(scores, 1)
