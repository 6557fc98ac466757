"""Video question answering: MSVD-QA, MSRVTT-QA, iVQA (pre-extracted frames).

| format         | file(s)                                                                        |
|----------------|--------------------------------------------------------------------------------|
| msvd_qa        | *_qa.json `[{"id", "question", "answer", "video_id"}]`: frames in vid{N}/      |
| msrvtt_qa      | same; frames in video{N}/                                                      |
| ivqa           | *.csv: video_id, question, answer1..answer5 (start, end optional)              |

Video records list the pre-extracted frames found under `image_root/<video dir>/` (sorted) under
`frames`; a video without frames is a malformed entry.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping
from typing import Any

from data_pipelines.formats.common import (
    EntryError,
    ParseError,
    ParseReport,
    PathLike,
    Record,
    convert_all,
    field,
    indexed,
    layout_error,
    load_json,
    register,
)


class _FrameLister:
    """Lists (and caches) the extracted frames of each video directory."""

    def __init__(self, image_root: PathLike) -> None:
        self.root, self.cache = os.fspath(image_root), {}

    def __call__(self, video_dir: str) -> list[str]:
        if video_dir not in self.cache:
            path = os.path.join(self.root, video_dir)
            names = sorted(os.listdir(path)) if os.path.isdir(path) else []
            self.cache[video_dir] = [os.path.join(path, n) for n in names]
        if not self.cache[video_dir]:
            raise EntryError(f"no extracted frames in {os.path.join(self.root, video_dir)}")
        return self.cache[video_dir]


def _parse_video_qa(
    ann_path: PathLike, image_root: PathLike, report: ParseReport, dir_prefix: str
) -> list[Record]:
    data = load_json(ann_path)
    if not isinstance(data, list):
        raise layout_error(ann_path, 'a list of {"id", "question", "answer", "video_id"}')
    frames = _FrameLister(image_root)

    def convert(where: str, entry: Any) -> Record:
        """One question `{"id", "question", "answer"?, "video_id" or "video"}` -> a record."""
        if "video" in entry:  # LAVIS-style file name, e.g. "video7010.mp4"
            video_dir = os.path.splitext(field(entry, "video", str))[0]
        else:  # official: integer ids; frames extracted into vid{N}/ or video{N}/
            video_dir = f"{dir_prefix}{field(entry, 'video_id', int)}"
        record = {
            "id": str(entry.get("id", entry.get("question_id", where))),
            "frames": frames(video_dir),
            "question": field(entry, "question", str),
        }
        if "answer" in entry:
            record["answers"] = [field(entry, "answer", str)]
        return record

    return convert_all(indexed(data), convert, report)


@register("msvd_qa")
def parse_msvd_qa(ann_path: PathLike, image_root: PathLike, report: ParseReport) -> list[Record]:
    """MSVD-QA: frames of video N in `vid{N}/`."""
    return _parse_video_qa(ann_path, image_root, report, "vid")


@register("msrvtt_qa")
def parse_msrvtt_qa(ann_path: PathLike, image_root: PathLike, report: ParseReport) -> list[Record]:
    """MSRVTT-QA: frames of video N in `video{N}/`."""
    return _parse_video_qa(ann_path, image_root, report, "video")


@register("ivqa")
def parse_ivqa(ann_path: PathLike, image_root: PathLike, report: ParseReport) -> list[Record]:
    """iVQA csv: frames of clip `video_id_start_end/` (or `video_id/` without start/end)."""
    if not os.path.isfile(ann_path):
        raise FileNotFoundError(f"annotation file not found: {os.fspath(ann_path)}")
    with open(ann_path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = {"video_id", "question"} - set(reader.fieldnames or [])
        if missing:
            raise ParseError(f"{os.fspath(ann_path)}: missing csv columns {sorted(missing)}")
        rows = [(f"row {i}", row) for i, row in enumerate(reader, start=2)]  # 1 = header
    frames = _FrameLister(image_root)

    def convert(where: str, row: Mapping[str, str]) -> Record:
        """One csv row (video_id, start?, end?, question, answer1..5) -> a record."""
        video = row["video_id"]
        if row.get("start") and row.get("end"):
            video = f"{video}_{row['start']}_{row['end']}"
        record = {
            "id": f"{video}_{where.split()[-1]}",
            "frames": frames(video),
            "question": row["question"],
        }
        answers = [row[f"answer{k}"] for k in range(1, 6) if row.get(f"answer{k}")]
        if answers:
            record["answers"] = answers
        return record

    return convert_all(rows, convert, report)
