"""Where examples come from: annotation files (parsed by `formats`) or TFDS datasets.

A config entry (one element of `data_config.datasets`) names a registry dataset and either
`ann_path` + `image_root` (read through `formats.parse`) or `tfds` (a TFDS dataset in array_record
files, e.g. written by `python -m data_pipelines.prepare`: random access without re-parsing JSON
or touching the image tree; data_pipelines/tfds_data.py). Records are canonical dicts
(docs/CONTRACTS.md). TFDS records carry the encoded image bytes under `image_bytes` (a list for
video frames under `frame_bytes`, a video file's bytes under `video_bytes`) instead of a path.

An entry may also say how its files are made: `generate={"kind": <GENERATORS key>, **options}`
(the embedded demo: `{"kind": "demo_shapes", "root", "num_train", "num_eval", "seed"}`). The files
are then written on first use, by whichever code reads the entry first, so no driver needs to
know that a dataset is generated.

Start-up errors (unknown dataset, missing file or directory, empty split) are raised here, naming
the dataset and the path, before any worker starts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from etils import epath

from data_pipelines import demo_data, formats, registry, user_data
from data_pipelines.specs import DatasetSpec
from ib_jax.contract.config import DATA_DEFAULTS

logger = logging.getLogger(__name__)


def entry_name(entry: Mapping[str, Any]) -> str:
    """The registry name of a config entry (KeyError naming the entry if it has none)."""
    if "name" not in entry:
        raise KeyError(f"data config dataset entry {dict(entry)} has no 'name'")
    return str(entry["name"])


def resolve_spec(entry: Mapping[str, Any]) -> DatasetSpec:
    """The registry spec of a config entry (KeyError listing the known names if unknown); the
    user's own data (an entry with a `user` section) gets the spec of its task."""
    if user_data.is_user(entry):
        return user_data.spec(entry)
    return registry.get(entry_name(entry))


# ------------------------------------------------------------------------------------------
# Generated sources: files written by code on first use
# ------------------------------------------------------------------------------------------


def _demo_shapes(root: str, num_train: int = 600, num_eval: int = 100, seed: int = 0) -> None:
    demo_data.ensure_demo_dataset(root, int(num_train), int(num_eval), int(seed))


GENERATORS: dict[str, Callable[..., None]] = {"demo_shapes": _demo_shapes}


def ensure_generated(entry: Mapping[str, Any]) -> None:
    """Writes the files of an entry with `generate=` unless they are already there (no-op for
    other entries). Each generator checks its own output, so calling this again is cheap."""
    options = entry.get("generate")
    if not options:
        return
    options = dict(options)
    kind = options.pop("kind", None)
    if kind not in GENERATORS:
        raise KeyError(
            f"dataset {entry.get('name')!r}: unknown generate kind {kind!r}; "
            f"known: {sorted(GENERATORS)}"
        )
    GENERATORS[kind](**options)


def _check_paths(name: str, entry: Mapping[str, Any]) -> None:
    if "tfds" in entry:
        return
    for key in ("ann_path", "image_root"):
        if key not in entry:
            raise KeyError(f"dataset {name!r}: config entry needs {key!r} (or 'tfds')")
    ann_paths = entry["ann_path"]
    for path in [ann_paths] if isinstance(ann_paths, str) else list(ann_paths):
        if not epath.Path(path).exists():  # epath: local paths and buckets (gs://) alike
            raise FileNotFoundError(f"dataset {name!r}: annotation file {path!r} does not exist")
    if not epath.Path(entry["image_root"]).is_dir():
        raise FileNotFoundError(
            f"dataset {name!r}: image directory {entry['image_root']!r} does not exist"
        )


def load_records(
    entry: Mapping[str, Any], max_bad_fraction: float = DATA_DEFAULTS["max_bad_fraction"]
) -> Sequence[dict[str, Any]]:
    """A config entry -> its records (a list, or a lazy TFDS sequence). Never empty.

    A generated entry (`generate=`) has its files written first if they are not there yet.

    Annotation files go through `formats.parse` (options from the entry's `parse_options`, e.g.
    `{"split": "train"}`); malformed entries are skipped, counted and logged, and more than
    `max_bad_fraction` of them stop here with the parser's messages.
    """
    name = entry_name(entry)
    spec = resolve_spec(entry)
    ensure_generated(entry)
    _check_paths(name, entry)
    if "tfds" in entry:
        from data_pipelines import tfds_data  # local: TFDS is only needed for TFDS entries

        records: Sequence[dict[str, Any]] = tfds_data.TfdsRecords(entry)
        where = entry["tfds"]
    else:
        where = entry["ann_path"]
        records = formats.parse(
            spec.format,
            entry["ann_path"],
            entry["image_root"],
            dataset=name,
            max_errors=None,
            **dict(entry.get("parse_options") or {}),
        )
        report = records.report
        if report.num_errors:
            logger.warning(
                "dataset %s: skipped %d malformed annotation entries: %s",
                name,
                report.num_errors,
                "; ".join(report.messages[:5]),
            )
            total = report.num_errors + len(records)
            if report.num_errors > max_bad_fraction * total:
                raise ValueError(
                    f"dataset {name!r}: {report.num_errors} of {total} annotation entries in "
                    f"{where!r} are malformed (max_bad_fraction={max_bad_fraction}); first:\n  "
                    + "\n  ".join(report.messages)
                )
    if len(records) == 0:
        raise ValueError(f"dataset {name!r}: no examples in {where!r} (empty split)")
    return records
