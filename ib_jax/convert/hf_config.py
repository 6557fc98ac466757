"""Hugging Face `config.json` (InstructBlipConfig) -> our ModelConfig, following HF's own defaults."""

from __future__ import annotations

import json
import os
from typing import Any

from ib_jax.contract.model import LlamaConfig, ModelConfig, QFormerConfig, T5Config, VisionConfig


def _vision(c: dict[str, Any]) -> VisionConfig:
    return VisionConfig(
        hidden_size=c.get("hidden_size", 1408),
        intermediate_size=c.get("intermediate_size", 6144),
        num_layers=c.get("num_hidden_layers", 39),
        num_heads=c.get("num_attention_heads", 16),
        image_size=c.get("image_size", 224),
        patch_size=c.get("patch_size", 14),
        layer_norm_eps=c.get("layer_norm_eps", 1e-6),
        hidden_act=c.get("hidden_act", "gelu"),
    )


def _qformer(c: dict[str, Any], vision_width: int) -> QFormerConfig:
    return QFormerConfig(
        vocab_size=c.get("vocab_size", 30522),
        hidden_size=c.get("hidden_size", 768),
        intermediate_size=c.get("intermediate_size", 3072),
        num_layers=c.get("num_hidden_layers", 12),
        num_heads=c.get("num_attention_heads", 12),
        max_position_embeddings=c.get("max_position_embeddings", 512),
        layer_norm_eps=c.get("layer_norm_eps", 1e-12),
        cross_attention_frequency=c.get("cross_attention_frequency", 2),
        encoder_hidden_size=vision_width,
        hidden_act=c.get("hidden_act", "gelu"),
    )


def _t5(c: dict[str, Any]) -> T5Config:
    # HF T5Config.__post_init__: the activation comes from feed_forward_proj, and "gated-gelu"
    # means the tanh approximation ("gelu_new") whatever `dense_act_fn` says.
    proj = c.get("feed_forward_proj", "relu")
    act = "gelu_new" if proj == "gated-gelu" else proj.split("-")[-1]
    scale = (
        c["scale_decoder_outputs"]
        if "scale_decoder_outputs" in c
        else c.get("tie_word_embeddings") is not False
    )
    return T5Config(
        vocab_size=c.get("vocab_size", 32128),
        d_model=c.get("d_model", 512),
        d_kv=c.get("d_kv", 64),
        d_ff=c.get("d_ff", 2048),
        num_layers=c.get("num_layers", 6),
        num_decoder_layers=c.get("num_decoder_layers") or c.get("num_layers", 6),
        num_heads=c.get("num_heads", 8),
        relative_attention_num_buckets=c.get("relative_attention_num_buckets", 32),
        relative_attention_max_distance=c.get("relative_attention_max_distance", 128),
        layer_norm_epsilon=c.get("layer_norm_epsilon", 1e-6),
        dense_act_fn=act,
        is_gated_act=proj.startswith("gated-"),
        tie_word_embeddings=False,
        scale_decoder_outputs=bool(scale),
        pad_token_id=c.get("pad_token_id", 0),
        eos_token_id=c.get("eos_token_id", 1),
        decoder_start_token_id=c.get("decoder_start_token_id") or c.get("pad_token_id", 0),
    )


def _llama(c: dict[str, Any]) -> LlamaConfig:
    heads = c.get("num_attention_heads", 32)
    rope = c.get("rope_parameters") or c.get("rope_scaling") or {}
    unsupported = {
        "attention_bias": c.get("attention_bias", False),
        "mlp_bias": c.get("mlp_bias", False),
        "rope type": rope.get("rope_type", rope.get("type", "default")) != "default",
        "head_dim": c.get("head_dim") not in (None, c.get("hidden_size", 4096) // heads),
    }
    if any(unsupported.values()):
        raise ValueError(
            f"text_config: LLaMA variants with {[k for k, v in unsupported.items() if v]} are not "
            "supported (InstructBLIP-Vicuna uses none of them)"
        )
    # Token ids are read as saved. Beware: Vicuna-era config.json files carry ids that disagree with
    # the tokenizer the released models were trained with (LAVIS issue #509: bos 0 / eos 1 / pad -1);
    # that tokenizer's ids (2 / 2 / 32000) are LlamaConfig's defaults and configs/instructblip_vicuna*.py's.
    # plan_hf then takes the ids the directory's tokenizer files give (convert/tokenizer_ids.py).
    return LlamaConfig(
        vocab_size=c.get("vocab_size", 32001),
        hidden_size=c.get("hidden_size", 4096),
        intermediate_size=c.get("intermediate_size", 11008),
        num_layers=c.get("num_hidden_layers", 32),
        num_heads=heads,
        num_kv_heads=c.get("num_key_value_heads") or heads,
        rms_norm_eps=c.get("rms_norm_eps", 1e-6),
        rope_theta=(c.get("rope_parameters") or {}).get("rope_theta", c.get("rope_theta", 10000.0)),
        max_position_embeddings=c.get("max_position_embeddings", 2048),
        hidden_act=c.get("hidden_act", "silu"),
        tie_word_embeddings=bool(c.get("tie_word_embeddings")),
        bos_token_id=c.get("bos_token_id", 1),
        eos_token_id=c.get("eos_token_id", 2),
        pad_token_id=c.get("pad_token_id") if c.get("pad_token_id") is not None else 32000,
    )


def model_config_from_hf(config: dict[str, Any], **overrides: Any) -> ModelConfig:
    """An InstructBlipConfig dict -> ModelConfig (`overrides`: dtype, scan_layers, remat_policy...)."""
    vision = _vision(config.get("vision_config", {}))
    text_cfg = config.get("text_config", {})
    model_type = text_cfg.get("model_type", "t5")
    if model_type == "t5":
        text = _t5(text_cfg)
    elif model_type == "llama":
        text = _llama(text_cfg)
    else:
        raise ValueError(f"text_config.model_type {model_type!r} is not supported (t5 or llama)")
    return ModelConfig(
        vision=vision,
        qformer=_qformer(config.get("qformer_config", {}), vision.hidden_size),
        text=text,
        num_query_tokens=config.get("num_query_tokens", 32),
        **overrides,
    )


def image_token_index(config: dict[str, Any]) -> int | None:
    """The id of the `<image>` placeholder an InstructBlipConfig names (`image_token_index`, at
    the top level; configs saved before transformers 4.47 have none). Our ModelConfig does not
    hold it: the converter keeps it beside the converted checkpoint for `ib_jax.export`."""
    index = config.get("image_token_index")
    return None if index is None else int(index)


def read_hf_config(directory: str) -> dict[str, Any]:
    """`directory/config.json` as a dict, or a message naming the directory."""
    path = os.path.join(directory, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{directory} has no config.json; is it a Hugging Face checkpoint directory?"
        )
    with open(path) as f:
        return json.load(f)
