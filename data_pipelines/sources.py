"""Where examples come from: annotation files (parsed by `formats`) or prepared ArrayRecord files.

A config entry (one element of `data_config.datasets`) names a registry dataset and either
`ann_path` + `image_root` (read through `formats.parse`) or `array_record` (a file written by
`python -m data_pipelines.prepare`, random access without re-parsing JSON or touching the image
tree). Records are canonical dicts (docs/CONTRACTS.md). Prepared records carry the encoded image
bytes under `image_bytes` (a list for video frames under `frame_bytes`, a video file's bytes
under `video_bytes`) instead of a path.

An entry may also say how its files are made: `generate={"kind": <GENERATORS key>, **options}`
(the embedded demo: `{"kind": "demo_shapes", "root", "num_train", "num_eval", "seed"}`). The files
are then written on first use, by whichever code reads the entry first, so no driver needs to
know that a dataset is generated.

Start-up errors (unknown dataset, missing file or directory, empty split) are raised here, naming
the dataset and the path, before any worker starts.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from data_pipelines import formats, registry
from data_pipelines.preprocess import DATA_DEFAULTS
from data_pipelines.specs import DatasetSpec

logger = logging.getLogger(__name__)
ARRAY_RECORD_SUFFIX = ".array_record"


def entry_name(entry: Mapping[str, Any]) -> str:
    """The registry name of a config entry (KeyError naming the entry if it has none)."""
    if "name" not in entry:
        raise KeyError(f"data config dataset entry {dict(entry)} has no 'name'")
    return str(entry["name"])


def resolve_spec(entry: Mapping[str, Any]) -> DatasetSpec:
    """The registry spec of a config entry (KeyError listing the known names if unknown)."""
    return registry.get(entry_name(entry))


# ------------------------------------------------------------------------------------------
# Generated sources: files written by code on first use
# ------------------------------------------------------------------------------------------


def _demo_shapes(root: str, num_train: int = 600, num_eval: int = 100, seed: int = 0) -> None:
    from data_pipelines import demo_data  # local: only generated entries need the renderer

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


# ------------------------------------------------------------------------------------------
# ArrayRecord serialization: [u32 header length][JSON header][blob 0][blob 1]...
# The header is the record without image paths plus `blob_sizes`; blobs are the original
# encoded image files (no re-encoding, so decoding equals decoding the file).
# ------------------------------------------------------------------------------------------


def serialize_record(record: Mapping[str, Any], image_root: str | None = None) -> bytes:
    """A canonical record -> bytes, with its image (or frames) file contents embedded.
    Raises OSError naming the path when an image cannot be read."""
    header = {k: v for k, v in record.items() if k not in ("image", "frames", "video")}
    if "frames" in record:
        paths, header["is_video"] = record["frames"], True
    elif "video" in record:  # the video file itself, decoded at load time like the original
        paths, header["is_video_file"] = [record["video"]], True
    else:
        paths = [record["image"]] if "image" in record else []
    blobs = []
    for path in paths:
        full = path if image_root is None or os.path.isabs(path) else os.path.join(image_root, path)
        with open(full, "rb") as f:
            blobs.append(f.read())
    header["source_paths"] = list(paths)
    header["blob_sizes"] = [len(b) for b in blobs]
    header_bytes = json.dumps(header).encode()
    return struct.pack("<I", len(header_bytes)) + header_bytes + b"".join(blobs)


def deserialize_record(data: bytes) -> dict[str, Any]:
    """Inverse of `serialize_record`: the header dict plus `image_bytes`, `frame_bytes` or
    `video_bytes`."""
    (header_len,) = struct.unpack_from("<I", data, 0)
    record = json.loads(data[4 : 4 + header_len])
    offset, blobs = 4 + header_len, []
    for size in record.pop("blob_sizes"):
        blobs.append(data[offset : offset + size])
        offset += size
    if record.pop("is_video", False):
        record["frame_bytes"] = blobs
    elif record.pop("is_video_file", False):
        record["video_bytes"] = blobs[0]
    elif blobs:
        record["image_bytes"] = blobs[0]
    return record


class ArrayRecordRecords(Sequence):
    """Random-access records of an ArrayRecord file (grain's `ArrayRecordDataSource`), decoded.

    Picklable (grain re-opens the file in each worker)."""

    def __init__(self, path: str):
        import grain  # local: grain pulls in a lot; keep `import sources` light

        if not os.path.exists(path):
            raise FileNotFoundError(
                f"ArrayRecord file {path!r} does not exist "
                "(write it with `python -m data_pipelines.prepare`)"
            )
        self.path = path
        self._source = grain.sources.ArrayRecordDataSource([path])

    def __len__(self) -> int:
        """Number of records in the file."""
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """The decoded record at `index` (header fields + `image_bytes` / `frame_bytes`)."""
        return deserialize_record(self._source[index])


def _check_paths(name: str, entry: Mapping[str, Any]) -> None:
    if "array_record" in entry:
        return
    for key in ("ann_path", "image_root"):
        if key not in entry:
            raise KeyError(f"dataset {name!r}: config entry needs {key!r} (or 'array_record')")
    ann_paths = entry["ann_path"]
    for path in [ann_paths] if isinstance(ann_paths, str) else list(ann_paths):
        if not os.path.exists(path):
            raise FileNotFoundError(f"dataset {name!r}: annotation file {path!r} does not exist")
    if not os.path.isdir(entry["image_root"]):
        raise FileNotFoundError(
            f"dataset {name!r}: image directory {entry['image_root']!r} does not exist"
        )


def load_records(
    entry: Mapping[str, Any], max_bad_fraction: float = DATA_DEFAULTS["max_bad_fraction"]
) -> Sequence[dict[str, Any]]:
    """A config entry -> its records (a list, or a lazy ArrayRecord sequence). Never empty.

    A generated entry (`generate=`) has its files written first if they are not there yet.

    Annotation files go through `formats.parse` (options from the entry's `parse_options`, e.g.
    `{"split": "train"}`); malformed entries are skipped, counted and logged, and more than
    `max_bad_fraction` of them stop here with the parser's messages.
    """
    name = entry_name(entry)
    spec = resolve_spec(entry)
    ensure_generated(entry)
    _check_paths(name, entry)
    if "array_record" in entry:
        records: Sequence[dict[str, Any]] = ArrayRecordRecords(entry["array_record"])
        where = entry["array_record"]
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
