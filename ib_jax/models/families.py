"""The registry of language-model families: the one place that knows them by name.

`config.model.lm_type` names a family; the family gives the hyperparameter dataclass, the linen
module (implementing `ib_jax.models.lm.LanguageModel`), the width the Q-Former output is projected
to, the FLOPs of a teacher-forced example and the text conventions of its tokenizer. Adding a
family is adding a module that implements the interface and one entry here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn

from ib_jax.contract.model import TEXT_CONFIGS, LlamaConfig, T5Config
from ib_jax.contract.text import TEXT_FORMATS, TextFormat
from ib_jax.models import llama, t5


@dataclasses.dataclass(frozen=True)
class LMFamily:
    """One language-model family.

    name:          the `config.model.lm_type` value.
    config_cls:    frozen dataclass of the LM's hyperparameters (`ModelConfig.text`).
    module_cls:    linen module implementing `LanguageModel`, built as
                   `module_cls(text_config, dtype=..., param_dtype=..., scan_layers=...,
                   remat_policy=..., name=...)`.
    width:         text config -> the LM's embedding width D (the projection's output).
    forward_flops: (text config, prefix_len, text_len, target_len) -> FLOPs of one teacher-forced
                   example (2 per multiply-accumulate).
    text:          the text conventions its checkpoints were trained with (the LM tokenizer's
                   special tokens, padding and truncation): the contract's entry for this name
                   (ib_jax/contract/text.py), which data_pipelines/text.py applies.
    conversion:    the module holding its checkpoint conversion tables (HF and LAVIS rules,
                   aliases, unused keys, LAVIS key prefix; read by ib_jax/convert/api.py).
    """

    name: str
    config_cls: type
    module_cls: type[nn.Module]
    width: Callable[[Any], int]
    forward_flops: Callable[[Any, int, int, int], float]
    text: TextFormat
    conversion: str


# FLOPs of one teacher-forced example (2 per multiply-accumulate; matmuls and attention).


def _t5_forward_flops(config: T5Config, prefix_len: int, text_len: int, target_len: int) -> float:
    """Matmul and attention FLOPs (2 per MAC) of one teacher-forced example: the encoder over
    `[soft prompt][instruction]` (prefix_len + text_len tokens), the decoder and head over the
    target (target_len tokens)."""
    source_len = prefix_len + text_len
    inner = config.num_heads * config.d_kv
    ffn = (3 if config.is_gated_act else 2) * config.d_model * config.d_ff
    encoder = config.num_layers * (
        2 * source_len * (4 * config.d_model * inner + ffn) + 4 * source_len**2 * inner
    )
    decoder = config.num_decoder_layers * (
        2 * target_len * (6 * config.d_model * inner + ffn)
        + 2 * source_len * 2 * config.d_model * inner
        + 4 * target_len**2 * inner
        + 4 * target_len * source_len * inner
    )
    return encoder + decoder + 2 * target_len * config.d_model * config.vocab_size


def _llama_forward_flops(
    config: LlamaConfig, prefix_len: int, text_len: int, target_len: int
) -> float:
    """Matmul and attention FLOPs (2 per MAC) of one teacher-forced example over
    `[soft prompt][instruction][target]`; the head runs on the target slots only."""
    seq, d = prefix_len + text_len + target_len, config.hidden_size
    heads, kv_heads, head_dim = config.num_heads, config.num_kv_heads, config.head_dim
    projections = 2 * seq * d * head_dim * (2 * heads + 2 * kv_heads)  # q, o and k, v
    mlp = 2 * seq * 3 * d * config.intermediate_size  # SwiGLU: gate, up, down
    attention = 4 * seq * seq * heads * head_dim  # scores + weighted sum (dense mask)
    return (
        config.num_layers * (projections + mlp + attention) + 2 * target_len * d * config.vocab_size
    )


FAMILIES: dict[str, LMFamily] = {
    family.name: family
    for family in (
        LMFamily(
            name=T5Config.family,
            config_cls=T5Config,
            module_cls=t5.T5,
            width=lambda config: config.d_model,
            forward_flops=_t5_forward_flops,
            text=TEXT_FORMATS[T5Config.family],
            conversion="ib_jax.convert.rules",
        ),
        LMFamily(
            name=LlamaConfig.family,
            config_cls=LlamaConfig,
            module_cls=llama.Llama,
            width=lambda config: config.hidden_size,
            forward_flops=_llama_forward_flops,
            text=TEXT_FORMATS[LlamaConfig.family],
            conversion="ib_jax.convert.llama_rules",
        ),
    )
}


# Every LM config class has a family here, under the name it declares, and every family has its
# text conventions in the contract (ib_jax/contract/text.py), which the data side reads.
assert {name: f.config_cls for name, f in FAMILIES.items()} == TEXT_CONFIGS, "families vs configs"
assert set(FAMILIES) == set(TEXT_FORMATS), "families vs the contract's text formats"


def family(name: str) -> LMFamily:
    """The family called `name` (`config.model.lm_type`); a clear error for an unknown one."""
    if name not in FAMILIES:
        raise ValueError(f"config.model.lm_type must be one of {sorted(FAMILIES)}, got {name!r}")
    return FAMILIES[name]


def family_of(text_config: Any) -> LMFamily:
    """The family whose hyperparameter dataclass `text_config` is (`ModelConfig.text`)."""
    for candidate in FAMILIES.values():
        if type(text_config) is candidate.config_cls:
            return candidate
    raise TypeError(
        f"no language-model family uses {type(text_config).__name__}; "
        f"known: {[f.config_cls.__name__ for f in FAMILIES.values()]}"
    )
