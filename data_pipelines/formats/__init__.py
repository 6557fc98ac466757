"""Parsers for the public annotation formats the paper's datasets ship in.

`parse(format_name, ann_path, image_root, dataset=..., max_errors=..., **options)` returns the
canonical example dicts of docs/CONTRACTS.md as a list whose `.report` (a `ParseReport`) counts
malformed entries (with the first few messages naming file and entry) and entries skipped on
purpose (e.g. ScienceQA questions without an image). A missing or unreadable file stops at once
with a message naming the path. Malformed entries are collected, then more than `max_errors` of
them (default 0) stop with all the first messages: big public files have the odd broken row, and
the caller decides how many it tolerates.

One module per dataset family, each with the table of the layouts it accepts (the public files as
released; LAVIS's JSON where LAVIS uses its own): `captions` (COCO Caption, NoCaps, Flickr30K,
Web CapFilt, TextCaps), `vqa` (VQAv2, OK-VQA, A-OKVQA, GQA, VizWiz, TextVQA, OCR-VQA), `choice`
(IconQA, ScienceQA, VSR, Hateful Memes), `dialog` (Visual Dialog, LLaVA-Instruct), `video`
(MSVD-QA, MSRVTT-QA, iVQA), `user` (your own data: JSON Lines, JSON, CSV/TSV, Parquet, Hugging
Face folders). A new format: a function `fn(ann_path, image_root, report, **options)` in its
family's module, decorated with `@register("name")` (`several_files=True` when it takes a list of
annotation files).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

# The family modules register their parsers into PARSERS on import.
from data_pipelines.formats import captions, choice, dialog, user, video, vqa  # noqa: F401
from data_pipelines.formats.common import (
    MAX_MESSAGES,
    PARSERS,
    EntryError,
    ParseError,
    Parser,
    ParseReport,
    PathLike,
    Record,
    register,
)

__all__ = [
    "MAX_MESSAGES",
    "PARSERS",
    "EntryError",
    "ParseError",
    "ParseReport",
    "ParsedRecords",
    "Parser",
    "Record",
    "parse",
    "register",
]


class ParsedRecords(list):
    """The records (a plain list, so callers can iterate it) plus the `report` of the parse."""

    def __init__(self, records: Iterable[Record], report: ParseReport) -> None:
        super().__init__(records)
        self.report = report


def _single_path(ann_path: PathLike | Sequence[PathLike], fmt: str) -> PathLike:
    if isinstance(ann_path, (str, os.PathLike)):
        return ann_path
    if len(ann_path) == 1:
        return ann_path[0]
    raise ParseError(f"format '{fmt}' takes one annotation file, got {list(ann_path)}")


def parse(
    format_name: str,
    ann_path: PathLike | Sequence[PathLike],
    image_root: PathLike,
    *,
    dataset: str | None = None,
    max_errors: int | None = 0,
    **options: Any,
) -> ParsedRecords:
    """Parse one dataset's annotation file(s) into canonical records.

    Returns the records as a list with the `ParseReport` attached (`records.report`). Image and
    frame paths are joined with `image_root` and made absolute (unchanged if already absolute).
    `dataset` is written into every record (defaults to the format name). More than
    `max_errors` malformed entries raise ParseError (default 0: strict unless the caller sets a
    bound; None disables the check). `options` go to the format's parser (e.g. `split=` for
    Karpathy/ScienceQA/OCR-VQA, `ocr_path=` for TextVQA).
    """
    if format_name not in PARSERS:
        raise KeyError(f"unknown annotation format '{format_name}'; known: {sorted(PARSERS)}")
    parser = PARSERS[format_name]
    if not parser.several_files:
        ann_path = _single_path(ann_path, format_name)
    label = (
        os.fspath(ann_path)
        if isinstance(ann_path, (str, os.PathLike))
        else " + ".join(os.fspath(p) for p in ann_path)
    )
    report = ParseReport(label)
    try:
        root = image_root if "://" in str(image_root) else os.path.abspath(image_root)  # gs://
        records = parser.fn(ann_path, root, report, **options)
    except TypeError as e:
        if "unexpected keyword argument" in str(e):
            raise TypeError(
                f"format '{format_name}' does not take option(s) {sorted(options)}: {e}"
            ) from None
        raise
    for record in records:
        record["dataset"] = dataset or format_name
    report.num_records = len(records)
    if max_errors is not None:
        report.check(max_errors)
    return ParsedRecords(records, report)
