"""The data config checked against a model: what would make the model read past a table.

JAX's out-of-bounds gathers do not raise (an id past an embedding table or a position past a
position table reads a clamped row), so these run before anything compiles: by the jobs'
start-up validation (`ib_jax.validate`) and by `python -m data_pipelines.check`. Each returns one
line per problem naming the config field(s) and both values. The model is the contract's
`ModelConfig` (ib_jax/contract/model.py); the tokenizers are read with `data_pipelines.text`.
"""

from __future__ import annotations

from typing import Any

from etils import epath

from data_pipelines import text
from ib_jax.contract.model import ModelConfig
from ib_jax.contract.text import text_format


def problems(data: Any, model: ModelConfig, report_missing: bool = True) -> list[str]:
    """Every problem of the data config `data` against `model`: tokenizers (files, vocabularies,
    special ids; missing files reported only with `report_missing`), lengths, image size."""
    return (
        tokenizer_problems(data, model, report_missing)
        + length_problems(data, model)
        + image_problems(data, model)
    )


def setting_of(section: Any, key: str, default: Any = None) -> Any:
    return section.get(key, default) if hasattr(section, "get") else default


def tokenizer_problems(data: Any, model: ModelConfig, report_missing: bool = True) -> list[str]:
    found: list[str] = []
    missing = found if report_missing else []
    lm_type = setting_of(data, "lm_type") or "t5"
    if lm_type != model.lm_type:
        found.append(
            f"data.lm_type={lm_type!r} lays out text for another LM than model.lm_type="
            f"{model.lm_type!r}"
        )
    vocab = setting_of(data, "qformer_vocab")
    if vocab and file_exists(vocab, "data.qformer_vocab", missing):
        try:
            qformer = text.QFormerTokenizer(str(vocab))
        except ValueError as error:
            found.append(f"data.qformer_vocab: {error}")
        else:
            if qformer.vocab_size > model.qformer.vocab_size:
                found.append(
                    f"data.qformer_vocab={vocab!r} has {qformer.vocab_size} ids (counting "
                    f"[DEC]), more than model.qformer.vocab_size={model.qformer.vocab_size}"
                )
    spm = setting_of(data, "lm_spm")
    if spm and file_exists(spm, "data.lm_spm", missing):
        try:
            lm = text.LMTokenizer(str(spm), text_format(model.lm_type))
        except ValueError as error:
            found.append(f"data.lm_spm: {error}")
        else:
            found += _lm_ids(str(spm), lm, model.text)
    return found


def _lm_ids(spm: str, lm: Any, text_config: Any) -> list[str]:
    found = []
    if lm.vocab_size > text_config.vocab_size:
        found.append(
            f"data.lm_spm={spm!r} has {lm.vocab_size} ids, more than model.text.vocab_size="
            f"{text_config.vocab_size}"
        )
    ids = {"eos_token_id": lm.eos_id, "pad_token_id": lm.pad_id}
    if lm.bos_id is not None and hasattr(text_config, "bos_token_id"):
        ids["bos_token_id"] = lm.bos_id
    for field, ours in ids.items():
        if getattr(text_config, field) != ours:
            found.append(
                f"data.lm_spm={spm!r} gives {field.removesuffix('_token_id')} id {ours}, but "
                f"model.text.{field}={getattr(text_config, field)}"
            )
    return found


def length_problems(data: Any, model: ModelConfig) -> list[str]:
    found = []
    qformer_len = setting_of(data, "qformer_max_len")
    if (
        qformer_len
        and model.instruction_aware
        and qformer_len > model.qformer.max_position_embeddings
    ):
        found.append(
            f"data.qformer_max_len={qformer_len} exceeds model.qformer.max_position_embeddings="
            f"{model.qformer.max_position_embeddings}"
        )
    limit = getattr(model.text, "max_position_embeddings", None)
    text_len, target_len = setting_of(data, "text_max_len"), setting_of(data, "target_max_len")
    if limit and text_len and target_len:  # decoder-only: queries, instruction, target in one
        total = model.num_query_tokens + text_len + target_len
        if total > limit:
            found.append(
                f"model.num_query_tokens + data.text_max_len + data.target_max_len = "
                f"{model.num_query_tokens} + {text_len} + {target_len} = {total} exceeds "
                f"model.text.max_position_embeddings={limit}"
            )
    return found


def fit_lengths(data: Any, model: ModelConfig) -> list[str]:
    """Cut the data config's token lengths (in place) to what `model`'s position tables hold;
    one message per length cut. For evaluating a checkpoint whose architecture the config does
    not describe (a converted model of another size): the instruction is truncated, as a longer
    one would be, instead of reading past the position table."""
    cut = []
    qformer_limit = model.qformer.max_position_embeddings
    if model.instruction_aware and setting_of(data, "qformer_max_len", 0) > qformer_limit:
        cut.append(f"data.qformer_max_len={data.qformer_max_len} cut to {qformer_limit}")
        data.qformer_max_len = qformer_limit
    limit = getattr(model.text, "max_position_embeddings", None)
    if limit:  # decoder-only: queries, instruction and target share the positions
        room = limit - model.num_query_tokens - setting_of(data, "target_max_len", 0)
        if setting_of(data, "text_max_len", 0) > room:
            cut.append(f"data.text_max_len={data.text_max_len} cut to {room}")
            data.text_max_len = room
    return [f"{c}: model.{'qformer' if 'qformer' in c else 'text'} position table" for c in cut]


def image_problems(data: Any, model: ModelConfig) -> list[str]:
    found, patch = [], model.vision.patch_size
    if model.vision.image_size % patch:
        found.append(
            f"model.vision.image_size={model.vision.image_size} is not a multiple of "
            f"model.vision.patch_size={patch}: the position table would not match the patch grid"
        )
    size = setting_of(data, "image_size")
    if size and size % patch:
        found.append(
            f"data.image_size={size} is not a multiple of model.vision.patch_size={patch}: the "
            f"last {size % patch} pixel rows and columns would be dropped"
        )
    return found


def file_exists(path: str, field: str, found: list[str]) -> bool:
    try:
        if epath.Path(str(path)).exists():
            return True
    except Exception as error:  # gs:// without gcsfs (ImportError), no credentials, ...
        found.append(f"{field}: {str(path)!r} cannot be read: {type(error).__name__}: {error}")
        return False
    found.append(f"{field}: file {str(path)!r} does not exist")
    return False
