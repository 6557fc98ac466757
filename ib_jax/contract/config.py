"""Typed sections of a run config: every field, its type and its default, in one place.

A run config is an `ml_collections` file (`configs/*.py`, `get_config(arg)`); each entry point
builds these frozen sections from it once (`RunConfig.from_config`) and reads fields as
attributes. A field the section does not know (a misspelt override, a stale config file) is
refused with a `ConfigFieldError` naming it and the closest known field, which `ib_jax.contract.cli` turns
into one line with exit status 3. `configs/common.py` builds its ConfigDicts from these defaults.

Sections: `train`, `checkpoint`, `init`, `mesh`, `eval` (the eval job), `evals` (the declared
evaluations, one `Evaluation` each: dataset, mode, prompt, decoding, candidates, metric, batch
size), `distributed`, and `data` (its optional keys and defaults are `DATA_DEFAULTS`; the data
side reads them with `data_pipelines.preprocess.setting`). The model section's typed form is the
model's own `ib_jax.contract.model.ModelConfig`, built by the family registry.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from typing import Any, TypeVar

# Every key a run config may have at its top level.
TOP_LEVEL = ("model", "data", "init", "mesh", "train", "checkpoint", "eval", "evals", "distributed")
EVAL_MODES = ("generate", "rank")


class ConfigFieldError(ValueError):
    """A config field that does not exist or has a value of the wrong kind (exit status 3)."""


def closest(name: str, known: list[str] | tuple[str, ...]) -> str:
    """' (did you mean X?)' for the known name closest to `name`, or '' when none is close."""
    match = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def check_fields(where: str, given: Mapping[str, Any], known: list[str] | tuple[str, ...]) -> None:
    """Refuse the first key of `given` that is not in `known`, naming the closest known one."""
    for key in given:
        if key not in known:
            raise ConfigFieldError(
                f"{where}.{key} is not a config field{closest(key, known)}; "
                f"known fields of {where}: {', '.join(sorted(known))}"
            )


def as_patterns(value: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Regexes from a list, or from a comma-separated string (the command-line form)."""
    if isinstance(value, str):
        return tuple(p.strip() for p in value.split(",") if p.strip())
    return tuple(value)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """`config.train`: the paper's recipe by default (InstructBLIP Sec. 3: AdamW (0.9, 0.999),
    weight decay 0.05, linear warmup 1e-8 -> 1e-5 over 1,000 steps, then cosine)."""

    num_steps: int = 60_000
    warmup_steps: int = 1_000
    warmup_init_lr: float = 1e-8
    learning_rate: float = 1e-5
    end_learning_rate: float = 0.0
    weight_decay: float = 0.05
    b1: float = 0.9
    b2: float = 0.999
    grad_clip_norm: float = 0.0
    grad_accum_steps: int = 1
    # Regexes over "/"-joined parameter paths (a list, or a comma-separated string); the rest is
    # frozen: no gradient, no optimizer state.
    trainable: tuple[str, ...] = (
        r"^qformer/",
        r"^language_projection/",
        r"^vision/post_layernorm/",
    )
    frozen_dtype: str = ""  # "": from config.model.precision (else bfloat16)
    log_every: int = 50
    seed: int = 0
    stop_after_steps: int = 0  # > 0: save and return after this many steps of this invocation
    peak_flops_per_device: float = 0.0  # for MFU where the device kind is not in train/flops.py


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """`config.checkpoint`: save every `every_steps`, keep the newest `keep`, write async;
    `on_unreadable`: "fallback" (set a damaged newest checkpoint aside and resume from an older
    one) or "stop"."""

    every_steps: int = 2_000
    keep: int = 3
    async_save: bool = True
    on_unreadable: str = "fallback"


@dataclasses.dataclass(frozen=True)
class InitConfig:
    """`config.init`: where step 0's parameters come from. `pretrained`: a converted or HF
    InstructBLIP directory; or `blip2` (+ `bert`, `vit`, `language_model`, `seed`): BLIP-2's
    start (ib_jax/convert/blip2.py); all empty: random initialisation."""

    pretrained: str = ""
    blip2: str = ""
    bert: str = ""
    vit: str = ""
    language_model: str = ""
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """`config.mesh`: device counts per axis (-1: the devices left over) and the logical-axis
    rules (logical axis name -> mesh axis or axes, or None)."""

    shape: Mapping[str, int] = dataclasses.field(
        default_factory=lambda: {"data": -1, "fsdp": 1, "tensor": 1}
    )
    axis_rules: tuple[tuple[str, Any], ...] = ()


@dataclasses.dataclass(frozen=True)
class EvalJobConfig:
    """`config.eval`: how the eval job runs. `batch_size`: global examples per step (an
    evaluation's own `batch_size` wins); `split`: the data entries' split; `dtype` /
    `param_dtype`: inference numerics; `mesh`: {shape, axis_rules} (else config.mesh);
    `after_training`: the training job evaluates its final checkpoint."""

    batch_size: int = 16
    split: str = "eval"
    dtype: str = "float32"
    param_dtype: str = "float32"
    mesh: Mapping[str, Any] | None = None
    after_training: bool = False


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """One declared evaluation (`config.evals.<name>`).

    dataset:  the `config.data.eval_datasets` entry it reads (default: the evaluation's name)
    mode:     "generate" (decode freely, `num_beams`...) or "rank" (score candidates by likelihood)
    metric:   a name of `ib_jax.contract.metrics.METRIC_NAMES`
    prompt:   the instruction, with named slots filled from each record: {question}, {options}
              (choices joined with ", "), {ocr} (OCR tokens), {text}, {dialog}, {answer},
              {instruction} (the record's own instruction, verbatim)
    candidates: a fixed candidate list (rank); empty: each record's `choices`
    candidate_max_len: tokens per candidate (0: no cut, the longest candidate of the batch)
    batch_size: global batch (0: config.eval.batch_size)
    """

    name: str
    mode: str
    metric: str
    prompt: str
    dataset: str = ""
    split: str = ""  # "": config.eval.split
    num_beams: int = 5
    max_new_tokens: int = 10
    min_new_tokens: int = 1
    length_penalty: float = -1.0
    repetition_penalty: float = 1.0
    # Whether a decoder-only LM's prompt counts for the repetition penalty (HF's InstructBLIP: yes;
    # LAVIS's Vicuna, generating from inputs_embeds: no; ib_jax.decode.generate). T5: no effect.
    penalize_prompt: bool = True
    candidates: tuple[str, ...] = ()
    length_normalize: bool = False
    candidate_max_len: int = 16
    candidate_chunk: int = 0  # rank: candidates per decoder pass (0: all)
    batch_size: int = 0

    def __post_init__(self) -> None:
        if self.mode not in EVAL_MODES:
            raise ConfigFieldError(
                f"evals.{self.name}.mode={self.mode!r}; expected one of {EVAL_MODES}"
            )
        if not self.dataset:
            object.__setattr__(self, "dataset", self.name)
        object.__setattr__(self, "candidates", as_patterns(self.candidates))


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """`config.distributed`: an explicit process group (else the environment; ib_jax/distributed.py)."""

    coordinator_address: str = ""
    num_processes: int = 0
    process_id: int | None = None
    auto: bool = False


# Optional keys of `config.data` and their defaults (a key set to None also takes its default).
# The keys without a default must be in every data config: image_size, qformer_max_len,
# text_max_len, target_max_len, qformer_vocab, lm_spm, global_batch_size.
DATA_DEFAULTS: dict[str, Any] = {
    "datasets": (),  # training mixture entries (sources.load_records)
    "eval_datasets": (),  # evaluation entries, selected by (name, split)
    "seed": 0,  # template choice, shuffling and augmentation all derive from it
    "num_frames": 4,  # frames sampled per video clip
    "augment": False,  # LAVIS's training crop + flip (training only)
    "eval_batch_size": None,  # None: global_batch_size
    "worker_count": 0,  # Grain worker processes; 0 preprocesses in the main process
    "worker_buffer_size": 8,  # examples buffered per worker
    "prefetch_batches": 2,  # batches a background thread prepares ahead; 0 disables
    "max_bad_fraction": 0.01,  # bad examples (or malformed annotations) tolerated before stopping
    "bad_fraction_min_examples": 100,  # the fraction is taken of at least this many examples
    "lm_type": "t5",  # LM family whose text conventions the LM tokenizer follows (= model.lm_type)
}
DATA_REQUIRED = (
    "image_size",
    "qformer_max_len",
    "text_max_len",
    "target_max_len",
    "qformer_vocab",
    "lm_spm",
    "global_batch_size",
)

_Section = TypeVar("_Section")


def _plain(value: Any) -> Any:
    """ConfigDicts, FrozenConfigDicts and lists as plain dicts and tuples."""
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return tuple(_plain(v) for v in value)
    return value


def build(
    cls: type[_Section], where: str, values: Mapping[str, Any] | _Section | None, **extra
) -> _Section:
    """The section `cls` from a config mapping: unknown keys refused (closest known named),
    None values take the default, tuples for lists."""
    if isinstance(values, cls):  # already typed
        return values
    values = _plain(values) or {}
    known = [f.name for f in dataclasses.fields(cls) if f.name not in extra]
    check_fields(where, values, known)
    given = {k: v for k, v in values.items() if v is not None}
    if "trainable" in given:
        given["trainable"] = as_patterns(given["trainable"])
    try:
        return cls(**given, **extra)
    except TypeError as error:  # a required field missing
        raise ConfigFieldError(f"{where}: {error}") from None


def evaluations(config: Mapping[str, Any]) -> list[Evaluation]:
    """The declared evaluations of a run config (`config.evals`), in name order (the order
    ml_collections keeps its keys in)."""
    declared = _plain(config.get("evals")) or {}
    return [
        build(Evaluation, f"evals.{name}", entry, name=name) for name, entry in declared.items()
    ]


def data_section(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """`config.data` checked: every key known (DATA_DEFAULTS or DATA_REQUIRED) or refused naming
    the closest; returned as given (the data side reads it as a mapping)."""
    data = config["data"] if "data" in config else config
    check_fields("data", data, (*DATA_DEFAULTS, *DATA_REQUIRED))
    return data


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A run config's typed sections (what `from_config` could check; `model` and `data` are
    read by the model registry and the data side)."""

    train: TrainConfig
    checkpoint: CheckpointConfig
    mesh: MeshConfig
    init: InitConfig
    eval: EvalJobConfig
    evals: tuple[Evaluation, ...]
    distributed: DistributedConfig

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> RunConfig:
        """Every section of `config` checked and typed; absent sections take their defaults."""
        check_fields("config", config, TOP_LEVEL)
        if "data" in config:
            data_section(config)
        return cls(
            train=build(TrainConfig, "train", config.get("train")),
            checkpoint=build(CheckpointConfig, "checkpoint", config.get("checkpoint")),
            mesh=build(MeshConfig, "mesh", config.get("mesh")),
            init=build(InitConfig, "init", config.get("init")),
            eval=build(EvalJobConfig, "eval", config.get("eval")),
            evals=tuple(evaluations(config)),
            distributed=build(DistributedConfig, "distributed", config.get("distributed")),
        )


def defaults(cls: type, **overrides: Any) -> dict[str, Any]:
    """A section's defaults as a plain dict (lists as comma-separated strings), `overrides`
    applied and checked: what configs/common.py turns into ConfigDicts."""
    check_fields(cls.__name__, overrides, [f.name for f in dataclasses.fields(cls)])
    values = {
        f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
        for f in dataclasses.fields(cls)
        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
    }
    values.update(overrides)
    # Lists of strings as one comma-separated string: ml_collections overrides strings from the
    # command line (`--config.train.trainable=a,b`) but refuses lists.
    return {k: ",".join(v) if isinstance(v, tuple | list) else v for k, v in values.items()}
