"""Conversion tables for InstructBLIP-Vicuna: HF (`language_model.*`) and LAVIS (`llm_proj.*`, `llm_model.*`).

The image side (EVA ViT, Q-Former, query tokens, projection) is shared with the T5 tables; only the
language model rows are LLaMA's (`LlamaForCausalLM` names, the same in HF and in LAVIS's copy).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ib_jax.convert import rules
from ib_jax.convert.rules import Rule, dense, linear, norm

# LAVIS loads Vicuna (32000 rows) and resizes the embedding and head for the `[PAD]` it adds, so a
# separately given Vicuna file is exactly this many rows short of the trained model.
ADDED_TOKENS = 1


def _with_added_rows(x: np.ndarray, rows: int) -> np.ndarray:
    """[V0, D] -> [rows, D]: the rows of the tokens LAVIS added get the mean row (as HF's resize does).

    The `[PAD]` embedding is never attended to; a mean head row keeps its logit unremarkable.
    """
    missing = rows - x.shape[0]
    if missing == 0:
        return x
    if missing != ADDED_TOKENS:
        raise ValueError(
            f"{x.shape[0]} rows, need {rows} (only {ADDED_TOKENS} added token is expected)"
        )
    return np.concatenate([x, np.repeat(x.mean(axis=0, keepdims=True), missing, axis=0)])


def embedding_with_added_rows(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """[V0, D] -> [V, D] (see `_with_added_rows`)."""
    return _with_added_rows(x, shape[0]).reshape(shape)


def head_with_added_rows(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """torch lm_head [V0, D] -> kernel [D, V]."""
    return linear(_with_added_rows(x, shape[-1]), shape)


def _rows_check(source: tuple[int, ...], rows: int, width: tuple[int, ...]) -> str | None:
    if source[0] not in (rows, rows - ADDED_TOKENS) or tuple(source[1:]) != tuple(width):
        return f"needs [{rows} or {rows - ADDED_TOKENS} rows, {', '.join(map(str, width))}]"
    return None


def embedding_rows_check(source: tuple[int, ...], target: tuple[int, ...]) -> str | None:
    """The check of `embedding_with_added_rows`: [V or V - 1, D] for a [V, D] table."""
    return _rows_check(source, target[0], target[1:])


def head_rows_check(source: tuple[int, ...], target: tuple[int, ...]) -> str | None:
    """The check of `head_with_added_rows`: torch [V or V - 1, D] for a [D, V] kernel."""
    return _rows_check(source, target[-1], target[:-1])


def llama_rules(prefix: str, resize_vocab: bool = False) -> list[Rule]:
    """`{prefix}.model.*` and `{prefix}.lm_head.weight` of a LlamaForCausalLM -> language_model/..."""
    layer = rf"{prefix}\.model\.layers\.(?P<layer>\d+)"
    dst = "language_model/decoder/layers_{layer}"
    if resize_vocab:
        embedding = (embedding_with_added_rows, embedding_rows_check)
        head = (head_with_added_rows, head_rows_check)
    else:
        embedding, head = (rules.reshape, rules.same_size), (linear, rules.same_size)
    table = [
        Rule(
            rf"{prefix}\.model\.embed_tokens\.weight",
            "language_model/embed_tokens/embedding",
            *embedding,
        ),
        Rule(rf"{prefix}\.lm_head\.weight", "language_model/lm_head/kernel", *head),
        *norm(rf"{prefix}\.model\.norm", "language_model/decoder/final_norm", bias=False),
        *norm(rf"{layer}\.input_layernorm", f"{dst}/self_attention_norm", bias=False),
        *norm(rf"{layer}\.post_attention_layernorm", f"{dst}/mlp_norm", bias=False),
    ]
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
        table += dense(
            rf"{layer}\.self_attn\.{proj}",
            f"{dst}/self_attention/{proj}",
            bias=False,
            in_axes=2 if proj == "o_proj" else 1,
        )
    for proj in ("gate_proj", "up_proj", "down_proj"):
        table += dense(rf"{layer}\.mlp\.{proj}", f"{dst}/mlp/{proj}", bias=False)
    return table


# Rotary frequencies were a persistent buffer in the transformers versions LAVIS pinned (4.28-4.30),
# so Vicuna files of that time carry them. (No named `layer` group: core reads that as a ViT depth.)
_ROTARY_BUFFERS = [
    r"(language_model|llm_model)\.model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq",
    r"(language_model|llm_model)\.model\.rotary_emb\.inv_freq",
]

# The tables of the LLaMA family (`LMFamily.conversion` names this module); the head is never tied
# (Vicuna has its own lm_head).
LAVIS_PREFIX = "llm_model."
TIE_HEADLESS = False
DECODER_ONLY = True  # HF `use_decoder_only_language_model`
# A Vicuna vocabulary has no spare row for `<image>`: the id must be given.
IMAGE_TOKEN_INDEX: int | None = None
# No BLIP-2-Vicuna was released: a Vicuna model starts from the stage-1 Q-Former checkpoint.
LAVIS_STAGE2_PROJECTION: str | None = None

HF_LM_RULES: list[Rule] = llama_rules("language_model")
LAVIS_LM_RULES: list[Rule] = llama_rules("llm_model", resize_vocab=True)

HF_RULES: list[Rule] = [*rules.hf_image_rules(), *HF_LM_RULES]
HF_ALIASES: dict[str, str] = {}
HF_UNUSED: list[str] = list(_ROTARY_BUFFERS)

LAVIS_RULES: list[Rule] = [*rules.lavis_image_rules(r"llm_proj"), *LAVIS_LM_RULES]
LAVIS_ALIASES: dict[str, str] = {}
LAVIS_UNUSED: list[str] = [*rules.LAVIS_UNUSED, *_ROTARY_BUFFERS]


def hf_ties_head(text) -> bool:
    """Whether the exported LLaMA reads its logits off the input embedding (as configured)."""
    return text.tie_word_embeddings


def hf_text_config(t) -> dict[str, Any]:
    """LlamaConfig -> HF `text_config` (the inverse of hf_config.py's `_llama`)."""
    return dict(
        model_type="llama",
        vocab_size=t.vocab_size,
        hidden_size=t.hidden_size,
        intermediate_size=t.intermediate_size,
        num_hidden_layers=t.num_layers,
        num_attention_heads=t.num_heads,
        num_key_value_heads=t.num_kv_heads,
        head_dim=t.head_dim,
        rms_norm_eps=t.rms_norm_eps,
        rope_parameters=dict(rope_type="default", rope_theta=t.rope_theta),
        max_position_embeddings=t.max_position_embeddings,
        hidden_act=t.hidden_act,
        tie_word_embeddings=t.tie_word_embeddings,
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=t.bos_token_id,
        eos_token_id=t.eos_token_id,
        pad_token_id=t.pad_token_id,
    )
