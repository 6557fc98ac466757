"""Checks every dataset of a run config before anyone pays for a pod.

  python -m data_pipelines.check --config=configs/instructblip_flant5xl.py:root=/data [--sample=32]

`--config` is the run config training or evaluation takes (its `data` section is read; a data
config such as configs/data_heldin.py works too), with `--config.data.<key>=...` overrides. For
every training entry (`data.datasets`) and evaluation entry (`data.eval_datasets`) it parses the
annotations, resolves every image / video / frame file, decodes a sample of them (`--sample` files
per dataset, evenly spread; -1: all), fills every example's instruction, and prints one row:

  dataset  split  examples  skipped  malformed  files  missing  unreadable/decoded  weight  status

`malformed`: annotation entries the parser rejected plus examples whose instruction cannot be
filled; `missing`: media files that do not exist; `unreadable`: sampled files that do not decode;
`weight`: the dataset's share of the training mixture (sqrt(size) x multiplier). `status` is
`ok`, `faults` (counted and skipped by the pipeline, under `max_bad_fraction`) or `STOP` (the
run would stop: a missing annotation file, no examples, more malformed entries or bad files than
`max_bad_fraction` allows; for a training source, its share of bad examples in the mixture).
The tokenizer files are checked too. The exit status is 1 when anything would stop a run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from absl import app, flags
from etils import epath

from data_pipelines import (
    eval_pipeline,
    formats,
    images,
    mixing,
    model_checks,
    preprocess,
    sources,
    templates,
)
from ib_jax.contract import cli
from ib_jax.contract.config import evaluations
from ib_jax.contract.model import from_config_dict

COLUMNS = (
    "dataset",
    "split",
    "examples",
    "skipped",
    "malformed",
    "files",
    "missing",
    "unreadable",
    "weight",
    "status",
)


@dataclasses.dataclass
class DatasetCheck:
    """The findings for one config entry (training source or evaluation target)."""

    name: str
    split: str  # "train" for the mixture's entries, the entry's split for eval entries
    examples: int = 0
    skipped: int = 0
    malformed: int = 0
    files: int = 0
    missing: int = 0
    decoded: int = 0
    unreadable: int = 0
    bad_examples: int = 0  # examples the pipeline would drop (missing/unreadable media, no text)
    weight: float | None = None
    error: str | None = None  # why the dataset cannot be read at all
    messages: list[str] = dataclasses.field(default_factory=list)
    status: str = "ok"

    def row(self) -> list[str]:
        """The table row (COLUMNS order)."""
        weight = "-" if self.weight is None else f"{self.weight:.4f}"
        return [
            self.name,
            self.split,
            str(self.examples),
            str(self.skipped),
            str(self.malformed),
            str(self.files),
            str(self.missing),
            f"{self.unreadable}/{self.decoded}",
            weight,
            self.status,
        ]


def media_paths(record: Mapping[str, Any]) -> list[str]:
    """The files an example reads: its frames, video or image (none for prepared records)."""
    if record.get("frames"):
        return list(record["frames"])
    path = record.get("video") or record.get("image")
    return [path] if path else []


def _spread(items: Sequence[Any], count: int) -> list[Any]:
    """`count` items evenly spread over `items` (all when count < 0 or >= len)."""
    if count < 0 or count >= len(items):
        return list(items)
    return [items[(i * len(items)) // count] for i in range(count)]


def _records(entry: Mapping[str, Any], result: DatasetCheck) -> Sequence[dict[str, Any]]:
    """Parse the entry, counting malformed and skipped entries; errors land in `result.error`."""
    sources.ensure_generated(entry)
    if "tfds" in entry:
        return sources.load_records(entry)
    for key in ("ann_path", "image_root"):
        if key not in entry:
            raise KeyError(f"config entry needs {key!r} (or 'tfds')")
    records = formats.parse(
        sources.resolve_spec(entry).format,
        entry["ann_path"],
        entry["image_root"],
        dataset=result.name,
        max_errors=None,
        **dict(entry.get("parse_options") or {}),
    )
    result.skipped, result.malformed = records.report.num_skipped, records.report.num_errors
    result.messages.extend(records.report.messages[:5])
    return records


def _check_text(
    records: Sequence[dict[str, Any]],
    entry: Mapping,
    train: bool,
    seed: int,
    result: DatasetCheck,
    prompt: str = eval_pipeline.DEFAULT_PROMPT,
) -> set[int]:
    """Indices of the examples whose instruction cannot be filled (training or zero-shot)."""
    spec, failed = sources.resolve_spec(entry), set()
    for index, record in enumerate(records):
        try:
            if train:
                rng = templates.example_rng(seed, spec.name, index)
                templates.make_instruction(
                    record,
                    spec.task_category,
                    short_answer=spec.short_answer,
                    ocr=spec.ocr,
                    rng=rng,
                )
            else:
                eval_pipeline.eval_instruction(prompt, spec, record)
        except (KeyError, ValueError, TypeError, IndexError) as error:
            failed.add(index)
            _note(result, f"example {record.get('id', index)!r}: {error}")
    return failed


def check_entry(
    entry: Mapping[str, Any],
    data_config: Mapping[str, Any],
    *,
    train: bool,
    sample: int,
    prompt: str = eval_pipeline.DEFAULT_PROMPT,
) -> DatasetCheck:
    """Parse, resolve, decode a sample and fill the instructions of one config entry (an eval
    entry's with `prompt`, its declared evaluation's)."""
    result = DatasetCheck(
        sources.entry_name(entry), "train" if train else entry.get("split", "eval")
    )
    try:
        spec = sources.resolve_spec(entry)
        records = _records(entry, result)
    except (OSError, ValueError, KeyError, TypeError) as error:
        result.error = f"{type(error).__name__}: {error}"
        return result
    result.examples = len(records)
    seed = int(preprocess.setting(data_config, "seed"))
    bad = _check_text(records, entry, train, seed, result, prompt)
    result.malformed += len(bad)
    by_path: dict[str, list[int]] = {}
    for index, record in enumerate(records if "tfds" not in entry else ()):
        for path in media_paths(record):
            by_path.setdefault(path, []).append(index)
    result.files = len(by_path)
    # Bucket paths (your own data, gs://...) are looked up through etils.epath.
    exists = lambda p: epath.Path(p).exists() if "://" in p else os.path.exists(p)  # noqa: E731
    missing = {p for p in by_path if not exists(p)}
    result.missing = len(missing)
    for path in sorted(missing):
        bad.update(by_path[path])
        _note(result, f"missing file {path}")
    embedded = [i for i, r in enumerate(records) if "tfds" not in entry and "image_bytes" in r]
    if "tfds" not in entry and not embedded:
        chosen = _spread([p for p in by_path if p not in missing], sample)
        decode_failures = {p: by_path[p] for p in chosen if not _decodes(p, result)}
        result.decoded = len(chosen)
    else:  # prepared records (or your own data's embedded images): decode a sample of records
        pre = preprocess.ExamplePreprocessor(data_config, spec, train=False)
        indices = _spread(embedded or range(len(records)), sample)
        decode_failures = {i: [i] for i in indices if not _decodes(records[i], result, pre)}
        result.decoded = len(indices)
    result.unreadable = len(decode_failures)
    for indices in decode_failures.values():
        bad.update(indices)
    result.bad_examples = len(bad)
    return result


def _note(result: DatasetCheck, message: str) -> None:
    if len(result.messages) < 10:
        result.messages.append(message)


def _decodes(
    source: str | Mapping[str, Any],
    result: DatasetCheck,
    pre: preprocess.ExamplePreprocessor | None = None,
) -> bool:
    """Whether a media file (or a prepared record's embedded media) decodes; notes why not."""
    try:
        if pre is not None:
            pre.pixels(source, None)
        elif source.lower().endswith(images.VIDEO_SUFFIXES):
            images.load_clip_frames(source, 1)
        else:
            images.load_image(source)
    except images.BadImageError as error:
        _note(result, str(error))
        return False
    return True


def _judge(result: DatasetCheck, max_bad_fraction: float, train: bool) -> None:
    """Sets `status`: STOP when this dataset alone would stop a run, faults when any were met."""
    if result.error:
        result.status = "STOP"
    elif result.examples == 0:
        result.status, result.error = "STOP", "no examples (empty split)"
    elif result.malformed and result.malformed > max_bad_fraction * (
        result.examples + result.malformed
    ):
        result.status = "STOP"
    else:
        share = result.bad_examples / result.examples
        if train:  # the guard counts bad examples over the whole mixture
            share *= result.weight or 0.0
        if result.bad_examples and share > max_bad_fraction:
            result.status = "STOP"
        elif result.malformed or result.missing or result.unreadable or result.bad_examples:
            result.status = "faults"


def check_config(
    data_config: Mapping[str, Any], sample: int = 32, prompts: Mapping[str, str] | None = None
) -> list[DatasetCheck]:
    """Every training and evaluation entry of a data config, judged against its
    `max_bad_fraction`; training entries get their mixture weight; `prompts` {dataset: prompt}
    are the declared evaluations' (the record's own instruction where none is declared)."""
    prompts = prompts or {}
    max_bad = float(preprocess.setting(data_config, "max_bad_fraction"))
    train = [
        check_entry(e, data_config, train=True, sample=sample)
        for e in preprocess.setting(data_config, "datasets")
    ]
    entries = list(preprocess.setting(data_config, "datasets"))
    multipliers = {
        c.name: float(1.0 if e.get("multiplier") is None else e["multiplier"])
        for c, e in zip(train, entries)
    }
    mixed = {c.name: c.examples for c in train if c.examples and multipliers[c.name] > 0}
    if mixed:
        weights = mixing.mixture_weights(mixed, {n: multipliers[n] for n in mixed})
        for c in train:
            c.weight = weights.get(c.name, 0.0)
    evals = [
        check_entry(
            e,
            data_config,
            train=False,
            sample=sample,
            prompt=prompts.get(e.get("name"), eval_pipeline.DEFAULT_PROMPT),
        )
        for e in preprocess.setting(data_config, "eval_datasets")
    ]
    for c in train:
        _judge(c, max_bad, train=True)
    for c in evals:
        _judge(c, max_bad, train=False)
    return train + evals


def check_tokenizers(data_config: Mapping[str, Any]) -> list[str]:
    """Problems with the tokenizer files (missing), one message each."""
    return [
        f"{key}: file {data_config[key]!r} does not exist"
        for key in ("qformer_vocab", "lm_spm")
        if key in data_config and not os.path.isfile(str(data_config[key]))
    ]


def mixture_bad_fraction(checks: Sequence[DatasetCheck]) -> float:
    """The expected fraction of bad examples in the training stream (weights x bad shares)."""
    return sum(
        (c.weight or 0.0) * c.bad_examples / c.examples
        for c in checks
        if c.split == "train" and c.examples
    )


def format_table(checks: Sequence[DatasetCheck]) -> str:
    """The aligned table, one row per dataset, then each dataset's first problems."""
    rows = [list(COLUMNS)] + [c.row() for c in checks]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    for c in checks:
        for message in ([c.error] if c.error else []) + c.messages:
            lines.append(f"  {c.name} ({c.split}): {message}")
    return "\n".join(lines)


def _define_flags() -> None:
    """CLI flags, defined only when run as a program (importing two CLIs must not clash)."""
    global _CONFIG, _SAMPLE, _JSON
    _CONFIG = cli.define_config_flag()  # a run config (its `data` is read) or a data config
    _SAMPLE = flags.DEFINE_integer("sample", 32, "media files decoded per dataset (-1: all)")
    _JSON = flags.DEFINE_string("json", None, "also write the findings as JSON to this file")
    flags.mark_flags_as_required(["config"])


def main(argv: list[str]) -> None:
    """Prints the table; exits 1 when a dataset, the mixture or a tokenizer would stop a run."""
    del argv
    data_config = preprocess.data_section(_CONFIG.value)
    prompts = {e.dataset: e.prompt for e in evaluations(_CONFIG.value)}
    checks = check_config(data_config, _SAMPLE.value, prompts)
    print(format_table(checks))
    problems = check_tokenizers(data_config)
    # The run's start-up checks: tokenizers, lengths and image size against the model.
    if "model" in _CONFIG.value:
        model = from_config_dict(_CONFIG.value.model)
        problems += model_checks.problems(data_config, model, report_missing=False)
    max_bad = float(preprocess.setting(data_config, "max_bad_fraction"))
    mixture = mixture_bad_fraction(checks)
    if mixture > max_bad:
        problems.append(
            f"the training mixture would be {mixture:.4f} bad examples, more than "
            f"max_bad_fraction={max_bad}"
        )
    problems += [f"{c.name} ({c.split}) would stop the run" for c in checks if c.status == "STOP"]
    for problem in problems:
        print(f"STOP: {problem}")
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump([dataclasses.asdict(c) for c in checks], f, indent=1)
    faults = sum(c.status == "faults" for c in checks)
    verdict = "would stop a run" if problems else "no dataset would stop a run"
    print(f"{len(checks)} datasets checked, {faults} with faults (counted, skipped); {verdict}")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    _define_flags()
    app.run(cli.guarded("check", main))
