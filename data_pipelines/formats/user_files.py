"""Reading the rows of one file or folder of your own data (data_pipelines/formats/user.py).

`read_rows(path, report)` -> ("line N" / "row N", row dict) pairs and the folder image paths are
relative to: JSON Lines and JSON through the formats' own readers, CSV/TSV with `csv`, Parquet
with pyarrow, `save_to_disk` folders with `datasets` (images left as stored, `{"bytes", "path"}`),
Hugging Face imagefolders by their metadata file, and (prediction) a bare folder of images.
"""

from __future__ import annotations

import csv
import os
from typing import Any

from data_pipelines.formats.common import (
    IMAGE_SUFFIXES,
    ParseError,
    ParseReport,
    jsonl_entries,
    load_json,
    read_text,
)

METADATA_FILES = ("metadata.jsonl", "metadata.csv")


def _csv_rows(path: str) -> list[tuple[str, Any]]:
    delimiter = "\t" if path.lower().endswith(".tsv") else ","
    reader = csv.DictReader(read_text(path).splitlines(), delimiter=delimiter)
    # Row numbers are the file's line numbers (the header is line 1).
    return [(f"line {n}", row) for n, row in enumerate(reader, start=2)]


def _parquet_rows(path: str) -> list[tuple[str, Any]]:
    import pyarrow.parquet as pq  # local: only Parquet input needs it

    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as error:
        raise ParseError(f"{path}: cannot read Parquet: {error}") from None
    return [(f"row {n}", row) for n, row in enumerate(table.to_pylist(), start=1)]


def _hf_dataset_rows(path: str, split: str | None) -> list[tuple[str, Any]]:
    import datasets  # local: only save_to_disk folders need it

    loaded = datasets.load_from_disk(path)
    if isinstance(loaded, datasets.DatasetDict):
        names = list(loaded)
        chosen = split or (names[0] if len(names) == 1 else None)
        if chosen not in loaded:
            raise ParseError(f"{path}: a DatasetDict with splits {names}; choose one with split=")
        loaded = loaded[chosen]
    # Image columns are read as stored ({"bytes", "path"}): decoding is the pipeline's job.
    for name, feature in loaded.features.items():
        if isinstance(feature, datasets.Image):
            loaded = loaded.cast_column(name, datasets.Image(decode=False))
    return [(f"row {n}", row) for n, row in enumerate(loaded.to_list(), start=1)]


def _image_folder_rows(path: str) -> list[tuple[str, Any]]:
    files = sorted(
        os.path.relpath(os.path.join(folder, name), path)
        for folder, _, names in os.walk(path)
        for name in names
        if name.lower().endswith(IMAGE_SUFFIXES)
    )
    return [(f"image {n}", {"image": f}) for n, f in enumerate(files, start=1)]


def read_rows(
    path: str, report: ParseReport, *, split: str | None = None, images_only: bool = False
) -> tuple[list[tuple[str, Any]], str]:
    """(("row N", row dict) pairs, the folder image paths are relative to) of one file/folder."""
    lower = path.lower()
    if os.path.isdir(path):
        for name in METADATA_FILES:  # Hugging Face imagefolder
            metadata = os.path.join(path, name)
            if os.path.isfile(metadata):
                return read_rows(metadata, report)[0], path
        if any(os.path.isfile(os.path.join(path, f)) for f in ("dataset_info.json", "state.json")):
            return _hf_dataset_rows(path, split), path
        if any(os.path.isfile(os.path.join(path, f)) for f in ("dataset_dict.json",)):
            return _hf_dataset_rows(path, split), path
        if images_only:
            return _image_folder_rows(path), path
        raise ParseError(
            f"{path}: a folder, but neither an imagefolder ({' or '.join(METADATA_FILES)} with a "
            "file_name column) nor a Hugging Face save_to_disk folder (dataset_info.json)"
        )
    folder = os.path.dirname(os.path.abspath(path))
    if lower.endswith(".jsonl"):
        return jsonl_entries(path, report), folder
    if lower.endswith((".csv", ".tsv")):
        return _csv_rows(path), folder
    if lower.endswith(".parquet"):
        return _parquet_rows(path), folder
    if lower.endswith(".json"):
        data = load_json(path)
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise ParseError(f"{path}: unexpected layout, expected a list of objects")
        return [(f"entry #{i}", e) for i, e in enumerate(data)], folder
    if not os.path.exists(path):
        raise FileNotFoundError(f"annotation file not found: {path}")
    raise ParseError(
        f"{path}: unknown file type; give .jsonl, .json, .csv, .tsv, .parquet, an imagefolder "
        "or a save_to_disk folder"
    )
