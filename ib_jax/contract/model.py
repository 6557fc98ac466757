"""Frozen, hashable model hyperparameters (linen module attributes), built from ml_collections.

The ml_collections config is what users edit; these dataclasses are what modules hold. One
conversion function per direction: `from_config_dict` (ours) and `ib_jax.convert.hf_config`
(Hugging Face `config.json`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import ml_collections

from ib_jax.contract import precision
from ib_jax.contract.config import as_patterns


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """EVA ViT-g by default (InstructBLIP's image encoder)."""

    hidden_size: int = 1408
    intermediate_size: int = 6144
    num_layers: int = 39
    num_heads: int = 16
    image_size: int = 224
    patch_size: int = 14
    layer_norm_eps: float = 1e-6
    hidden_act: str = "gelu"


@dataclasses.dataclass(frozen=True)
class QFormerConfig:
    """BERT-base Q-Former by default (30522 WordPiece rows + [DEC])."""

    vocab_size: int = 30523
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_layers: int = 12
    num_heads: int = 12
    max_position_embeddings: int = 512
    layer_norm_eps: float = 1e-12
    cross_attention_frequency: int = 2
    encoder_hidden_size: int = 1408
    hidden_act: str = "gelu"


@dataclasses.dataclass(frozen=True)
class T5Config:
    """FlanT5-XL by default; the `t5` LM family (ib_jax/models/t5.py)."""

    family: ClassVar[str] = "t5"  # `config.model.lm_type`; the family itself: models/families.py

    vocab_size: int = 32128
    d_model: int = 2048
    d_kv: int = 64
    d_ff: int = 5120
    num_layers: int = 24
    num_decoder_layers: int = 24
    num_heads: int = 32
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    dense_act_fn: str = "gelu"
    is_gated_act: bool = True
    tie_word_embeddings: bool = False  # True: logits against the shared embedding, no lm_head
    scale_decoder_outputs: bool = False  # multiply decoder output by d_model**-0.5 before the head
    pad_token_id: int = 0
    eos_token_id: int = 1
    decoder_start_token_id: int = 0


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Vicuna-7B v1.1 by default. The token ids are those of the tokenizer the released InstructBLIP
    checkpoints were trained with (LAVIS: LLaMA's SentencePiece with `</s>` as BOS, EOS and UNK, and
    `[PAD]` added as id 32000, hence the 32001-row vocabulary)."""

    family: ClassVar[str] = "llama"

    vocab_size: int = 32001
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 32
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 2048
    hidden_act: str = "silu"
    tie_word_embeddings: bool = False
    bos_token_id: int = 2  # Vicuna in InstructBLIP uses </s> as BOS
    eos_token_id: int = 2
    pad_token_id: int = 32000

    @property
    def head_dim(self) -> int:
        """Per-head width Dh = hidden_size / num_heads."""
        return self.hidden_size // self.num_heads


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """Low-rank adapters beside targeted Dense kernels (ib_jax/models/lora.py); rank 0: none.

    `targets`: regexes `re.search`ed in the path of each Dense module (its kernel's parameter
    path without `/kernel`, e.g. `language_model/encoder/layers_0/self_attention/q`); the branch
    adds `alpha / rank * (x @ A) @ B`. `rank_pattern` / `alpha_pattern`: (regex, value) pairs,
    the first searching hit overrides rank / alpha for that module (peft's fields of those
    names). `modules_to_save`: the Hugging Face module names a peft adapter stores in full (kept
    for export; ib_jax/convert/peft.py)."""

    rank: int = 0
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ()
    rank_pattern: tuple[tuple[str, int], ...] = ()
    alpha_pattern: tuple[tuple[str, float], ...] = ()
    modules_to_save: tuple[str, ...] = ()


def _pairs(value: Any, kind: type) -> tuple[tuple[str, Any], ...]:
    """{regex: value} or [(regex, value), ...] -> a hashable tuple of pairs (order kept)."""
    items = value.items() if hasattr(value, "items") else (value or ())
    return tuple((str(k), kind(v)) for k, v in items)


def lora_config(values: Mapping[str, Any] | None) -> LoraConfig:
    """`config.model.lora` (dict or ConfigDict; `targets` a list or comma-separated string)
    -> LoraConfig."""
    values = dict(values or {})
    if "targets" in values:
        values["targets"] = as_patterns(values["targets"])
    if "modules_to_save" in values:
        values["modules_to_save"] = as_patterns(values["modules_to_save"])
    if "rank_pattern" in values:
        values["rank_pattern"] = _pairs(values["rank_pattern"], int)
    if "alpha_pattern" in values:
        values["alpha_pattern"] = _pairs(values["alpha_pattern"], float)
    config = _build(LoraConfig, values)
    if config.rank < 0 or config.alpha < 0 or not 0 <= config.dropout < 1:
        raise ValueError(
            f"config.model.lora: rank {config.rank} and alpha {config.alpha} must be >= 0 and "
            f"dropout {config.dropout} in [0, 1)"
        )
    if config.rank > 0 and not config.targets:
        raise ValueError(
            "config.model.lora.rank > 0 needs config.model.lora.targets (regexes over Dense "
            "paths; `python -m ib_jax.convert --describe=CONFIG` lists them)"
        )
    return config


def lora_defaults(**overrides: Any) -> dict[str, Any]:
    """`config.model.lora` as configs/common.py writes it: LoraConfig's defaults with `targets`
    and `modules_to_save` as comma-separated strings (ml_collections overrides a string from the
    command line, `--config.model.lora.targets=a,b`, but not a list)."""
    values = {**dataclasses.asdict(LoraConfig()), **overrides}
    for key in ("targets", "modules_to_save"):
        if not isinstance(values[key], str):
            values[key] = ",".join(values[key])
    for key in ("rank_pattern", "alpha_pattern"):
        values[key] = dict(values[key])
    return values


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The whole InstructBLIP: vision, Q-Former, the LM (`text`: its family's config dataclass,
    ib_jax/models/families.py) and the numerics/layout shared by every tower."""

    vision: VisionConfig = VisionConfig()
    qformer: QFormerConfig = QFormerConfig()
    text: T5Config | LlamaConfig = T5Config()
    num_query_tokens: int = 32
    instruction_aware: bool = True
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"  # storage dtype of parameters as created by init
    scan_layers: bool = False
    remat_policy: str = "none"
    lora: LoraConfig = LoraConfig()

    @property
    def lm_type(self) -> str:
        """The language-model family's name (`config.model.lm_type`)."""
        return type(self.text).family


# The LM families' hyperparameter classes by name, so that a config dict is read without importing
# the models; ib_jax/models/families.py pairs each with its module, FLOPs and text conventions.
TEXT_CONFIGS: dict[str, type] = {cls.family: cls for cls in (T5Config, LlamaConfig)}


def _build(cls: type, values: dict[str, Any]) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {sorted(unknown)}; known: {sorted(names)}")
    return cls(**values)


def from_config_dict(model: ml_collections.ConfigDict | dict) -> ModelConfig:
    """`config.model` (see configs/) -> ModelConfig."""
    model = dict(model.to_dict() if isinstance(model, ml_collections.ConfigDict) else model)
    model = precision.resolve_model_fields(model)  # config.model.precision -> dtype, param_dtype

    lm_type = model.pop("lm_type", "t5")
    if lm_type not in TEXT_CONFIGS:
        raise ValueError(
            f"config.model.lm_type must be one of {sorted(TEXT_CONFIGS)}, got {lm_type!r}"
        )
    text_cls = TEXT_CONFIGS[lm_type]
    model["vision"] = _build(VisionConfig, model.get("vision", {}))
    model["qformer"] = _build(QFormerConfig, model.get("qformer", {}))
    model["text"] = _build(text_cls, model.get("text", {}))
    model["lora"] = lora_config(model.get("lora"))
    return _build(ModelConfig, model)


def to_config_dict(config: ModelConfig) -> ml_collections.ConfigDict:
    """ModelConfig -> the `config.model` ConfigDict that `from_config_dict` reads back."""
    values = dataclasses.asdict(config)
    values["lm_type"] = config.lm_type
    return ml_collections.ConfigDict(values)
