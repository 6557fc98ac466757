"""Video question answering: MSVD-QA, MSRVTT-QA, iVQA, on the published video files.

| format         | file(s)                                                                        |
|----------------|--------------------------------------------------------------------------------|
| msvd_qa        | *_qa.json `[{"id", "question", "answer", "video_id": N}]`; video N is the clip |
|                | named `vid<N>` in youtube_mapping.txt (option `mapping_path`, default: beside  |
|                | the annotation file): `<image_root>/<clip>.avi` (YouTubeClips/)               |
| msrvtt_qa      | same keys; `<image_root>/video<N>.mp4` (TrainValVideo/ or TestVideo/)          |
| ivqa           | *.csv: video_id, start, end, question, answer1..answer5;                      |
|                | `<image_root>/<video_id>_<start>_<end>.webm` (videos/)                        |

A record's `video` is the clip's file (decoded with PyAV at load time, 4 frames sampled
uniformly). Pre-extracted frames are the alternative: when `<image_root>/<video key>/` is a
directory (`vid<N>`, `video<N>`, `<video_id>_<start>_<end>`), the record lists its frames under
`frames` instead. A file with another video extension than the published one is found too.

Options `answer_vocab` (the training split's *_qa.json) and `answer_vocab_size` give every record
the answer vocabulary as `choices`: the candidates the paper ranks for MSVD-QA and MSRVTT-QA, the
most frequent training answers (all of them when the size is None), as in the reference
implementations (ALPRO/LAVIS `train_ans2label.json`: 2,423 answers for MSVD-QA, 1,500 for
MSRVTT-QA).
"""

from __future__ import annotations

import collections
import csv
import os
from collections.abc import Callable, Mapping
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
    read_text,
    register,
)

VIDEO_SUFFIXES = (".avi", ".mp4", ".webm", ".mkv", ".mov", ".m4v")
_FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")


def _media_resolver(image_root: PathLike, extension: str) -> Callable[..., dict[str, Any]]:
    """(key, stem) -> {"frames": [...]} when `<root>/<key>/` holds frames, else {"video":
    `<root>/<stem><extension>`} (stem defaults to key)."""
    root = os.fspath(image_root)

    def resolve(key: str, stem: str | None = None) -> dict[str, Any]:
        """The media fields of one clip (its file need not exist: missing files are the
        loader's and the checker's to count, not a malformed annotation)."""
        stem = stem or key
        directory = os.path.join(root, key)
        if os.path.isdir(directory):
            names = sorted(n for n in os.listdir(directory) if n.lower().endswith(_FRAME_SUFFIXES))
            if not names:
                raise EntryError(f"frame directory {directory} holds no frames")
            return {"frames": [os.path.join(directory, n) for n in names]}
        published = os.path.join(root, stem + extension)
        if not os.path.exists(published):
            for other in VIDEO_SUFFIXES:
                if os.path.exists(os.path.join(root, stem + other)):
                    return {"video": os.path.join(root, stem + other)}
        return {"video": published}

    return resolve


def answer_vocabulary(path: PathLike, size: int | None = None) -> list[str]:
    """The `size` most frequent answers of a *_qa.json file (ties alphabetical), all if None."""
    data = load_json(path)
    if not isinstance(data, list):
        raise layout_error(path, 'a list of {"question", "answer", "video_id"}')
    counts = collections.Counter(
        e["answer"] for e in data if isinstance(e, dict) and isinstance(e.get("answer"), str)
    )
    if not counts:
        raise ParseError(f"{os.fspath(path)}: no answers to build the answer vocabulary from")
    ranked = sorted(counts, key=lambda a: (-counts[a], a))
    return ranked if size is None else ranked[: int(size)]


def _msvd_clips(mapping_path: PathLike) -> dict[int, str]:
    """{N: clip name} from youtube_mapping.txt lines "<clip name> vid<N>"."""
    clips = {}
    for number, line in enumerate(read_text(mapping_path).splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].startswith("vid") or not parts[1][3:].isdigit():
            raise ParseError(
                f"{os.fspath(mapping_path)}: line {number}: expected '<clip name> vid<N>', "
                f"got {line!r}"
            )
        clips[int(parts[1][3:])] = parts[0]
    return clips


def _parse_video_qa(
    ann_path: PathLike,
    report: ParseReport,
    clip_of: Callable[[int], tuple[str, str]],
    resolve: Callable[..., dict[str, Any]],
    vocabulary: list[str] | None,
) -> list[Record]:
    """Shared by MSVD-QA and MSRVTT-QA: `clip_of(video_id)` -> (frame-dir key, file stem)."""
    data = load_json(ann_path)
    if not isinstance(data, list):
        raise layout_error(ann_path, 'a list of {"id", "question", "answer", "video_id"}')

    def convert(where: str, entry: Any) -> Record:
        """One question `{"id", "question", "answer"?, "video_id" or "video"}` -> a record."""
        if "video" in entry:  # LAVIS-style file name, e.g. "video7010.mp4"
            media = resolve(os.path.splitext(field(entry, "video", str))[0])
        else:
            media = resolve(*clip_of(field(entry, "video_id", int)))
        record = {
            "id": str(entry.get("id", entry.get("question_id", where))),
            **media,
            "question": field(entry, "question", str),
        }
        if "answer" in entry:
            record["answers"] = [field(entry, "answer", str)]
        if vocabulary is not None:
            record["choices"] = vocabulary  # one shared list: records reference, not copy, it
        return record

    return convert_all(indexed(data), convert, report)


def _vocabulary(answer_vocab: PathLike | None, size: int | None) -> list[str] | None:
    return None if answer_vocab is None else answer_vocabulary(answer_vocab, size)


@register("msvd_qa")
def parse_msvd_qa(
    ann_path: PathLike,
    image_root: PathLike,
    report: ParseReport,
    mapping_path: PathLike | None = None,
    answer_vocab: PathLike | None = None,
    answer_vocab_size: int | None = None,
) -> list[Record]:
    """MSVD-QA: video N is YouTubeClips/<clip>.avi, the clip youtube_mapping.txt maps to vid<N>
    (or frames in `vid<N>/`; without the mapping file, `vid<N>.avi` as some loaders rename the
    clips)."""
    mapping_path = mapping_path or os.path.join(
        os.path.dirname(os.fspath(ann_path)), "youtube_mapping.txt"
    )
    resolve = _media_resolver(image_root, ".avi")
    clips = _msvd_clips(mapping_path) if os.path.exists(mapping_path) else None

    def clip_of(video_id: int) -> tuple[str, str]:
        """(frame-dir key, video file stem) of MSVD video `video_id`."""
        key = f"vid{video_id}"
        # Without the mapping only frame folders (or clips renamed vid<N>.avi) can be found.
        if clips is None or os.path.isdir(os.path.join(os.fspath(image_root), key)):
            return key, key
        if video_id not in clips:
            raise EntryError(f"video_id {video_id} (vid{video_id}) is not in {mapping_path}")
        return key, clips[video_id]

    vocabulary = _vocabulary(answer_vocab, answer_vocab_size)
    return _parse_video_qa(ann_path, report, clip_of, resolve, vocabulary)


@register("msrvtt_qa")
def parse_msrvtt_qa(
    ann_path: PathLike,
    image_root: PathLike,
    report: ParseReport,
    answer_vocab: PathLike | None = None,
    answer_vocab_size: int | None = None,
) -> list[Record]:
    """MSRVTT-QA: video N is `video<N>.mp4` (or frames in `video<N>/`)."""
    resolve = _media_resolver(image_root, ".mp4")
    vocabulary = _vocabulary(answer_vocab, answer_vocab_size)
    return _parse_video_qa(
        ann_path, report, lambda n: (f"video{n}", f"video{n}"), resolve, vocabulary
    )


@register("ivqa")
def parse_ivqa(ann_path: PathLike, image_root: PathLike, report: ParseReport) -> list[Record]:
    """iVQA csv: clip `<video_id>_<start>_<end>.webm` (or frames in a folder of that name;
    `<video_id>` alone when the csv has no start/end)."""
    if not os.path.isfile(ann_path):
        raise FileNotFoundError(f"annotation file not found: {os.fspath(ann_path)}")
    with open(ann_path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = {"video_id", "question"} - set(reader.fieldnames or [])
        if missing:
            raise ParseError(f"{os.fspath(ann_path)}: missing csv columns {sorted(missing)}")
        rows = [(f"row {i}", row) for i, row in enumerate(reader, start=2)]  # 1 = header
    resolve = _media_resolver(image_root, ".webm")

    def convert(where: str, row: Mapping[str, str]) -> Record:
        """One csv row (video_id, start?, end?, question, answer1..5) -> a record."""
        video = row["video_id"]
        if row.get("start") and row.get("end"):
            video = f"{video}_{row['start']}_{row['end']}"
        if not row.get("question"):
            raise EntryError("empty 'question'")
        record = {
            "id": f"{video}_{where.split()[-1]}",
            **resolve(video),
            "question": row["question"],
        }
        answers = [row[f"answer{k}"] for k in range(1, 6) if row.get(f"answer{k}")]
        if answers:
            record["answers"] = answers
        return record

    return convert_all(rows, convert, report)
