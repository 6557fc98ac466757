"""Multiple choice and classification: IconQA, ScienceQA, VSR, Hateful Memes.

| format         | file(s)                                                                        |
|----------------|--------------------------------------------------------------------------------|
| iconqa         | problems.json `{pid: {"question", "choices"?, "answer", "ques_type", "split"}}`|
|                | (option `ques_types`, e.g. ["choose_txt"])                                    |
| scienceqa      | problems.json `{pid: {..., "image": name or null, "split"}}` (option `split`) |
| vsr            | *.jsonl `{"image", "caption", "label"}`                                        |
| hateful_memes  | *.jsonl `{"id", "img", "label"?, "text"}`                                      |

Choices come with `answer_index` into `choices`; binary tasks carry `label` 0/1 and the answer
text the prompt asks for (`answers`: "true"/"false" for VSR, "yes"/"no" for Hateful Memes), so
each can be a training source as well as an evaluation target.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from data_pipelines.formats.common import (
    EntryError,
    ParseReport,
    PathLike,
    Record,
    as_set,
    convert_all,
    field,
    join,
    jsonl_entries,
    keyed,
    layout_error,
    load_json,
    register,
    str_list,
)


@register("iconqa")
def parse_iconqa(
    ann_path: PathLike,
    image_root: PathLike,
    report: ParseReport,
    ques_types: Sequence[str] | None = None,
    split: str | None = None,
) -> list[Record]:
    """IconQA: choose_txt/choose_img problems get `choices` + `answer_index`, fill_in_blank
    gets `answers`; options `ques_types` and `split` filter (filtered problems are skipped)."""
    data = load_json(ann_path)
    if not isinstance(data, dict):
        raise layout_error(ann_path, "an object {pid: problem} (IconQA problems.json)")
    types, splits = as_set(ques_types), as_set(split)

    def convert(where: str, item: tuple[str, Any]) -> Record | None:
        """(pid, problem) -> a record, or None for a question type or split not asked for."""
        pid, p = item
        ques_type, p_split = field(p, "ques_type", str), field(p, "split", str)
        if (types is not None and ques_type not in types) or (splits and p_split not in splits):
            return None
        record = {
            "id": str(pid),
            "question": field(p, "question", str),
            "image": join(image_root, f"{p_split}/{ques_type}/{pid}/image.png"),
        }
        answer = field(p, "answer")
        if "choices" in p:  # choose_txt / choose_img: the answer is an index
            record["choices"] = str_list(p, "choices")
            index = int(answer)
            if not 0 <= index < len(record["choices"]):
                raise EntryError(f"answer {index} outside the {len(record['choices'])} choices")
            record["answer_index"] = index
        else:  # fill_in_blank: the answer is text
            record["answers"] = [str(answer)]
        return record

    return convert_all(keyed(data), convert, report)


@register("scienceqa")
def parse_scienceqa(
    ann_path: PathLike,
    image_root: PathLike,
    report: ParseReport,
    split: str | Sequence[str] | None = None,
) -> list[Record]:
    """ScienceQA (IMG): questions without an image are skipped (counted, not errors)."""
    data = load_json(ann_path)
    if not isinstance(data, dict):
        raise layout_error(ann_path, "an object {pid: problem} (ScienceQA problems.json)")
    splits = as_set(split)

    def convert(where: str, item: tuple[str, Any]) -> Record | None:
        """(pid, problem) -> a record, or None without an image or outside the split."""
        pid, p = item
        p_split = field(p, "split", str)
        if not p.get("image") or (splits is not None and p_split not in splits):
            return None
        choices = str_list(p, "choices")
        index = field(p, "answer", int)
        if not 0 <= index < len(choices):
            raise EntryError(f"answer {index} outside the {len(choices)} choices")
        record = {
            "id": str(pid),
            "question": field(p, "question", str),
            "choices": choices,
            "answer_index": index,
            "image": join(image_root, f"{p_split}/{pid}/{field(p, 'image', str)}"),
        }
        if p.get("hint"):  # the textual context shown with the question
            record["text"] = field(p, "hint", str)
        return record

    return convert_all(keyed(data), convert, report)


def _binary_label(value: Any) -> int:
    if isinstance(value, bool) or value in (0, 1):
        return int(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "0", "1"):
        return int(value.strip().lower() in ("true", "1"))
    raise EntryError(f"field 'label' should be 0/1 or true/false, got {value!r}")


@register("vsr")
def parse_vsr(ann_path: PathLike, image_root: PathLike, report: ParseReport) -> list[Record]:
    """VSR: the caption is the statement to judge; `label` 0/1 and the answer "true"/"false"."""

    def convert(where: str, entry: Any) -> Record:
        """One jsonl row `{"image", "caption", "label"}` -> a record."""
        image, caption = field(entry, "image", str), field(entry, "caption", str)
        label = _binary_label(field(entry, "label"))
        return {
            "id": f"{os.path.splitext(image)[0]}_{where.split()[-1]}",
            "image": join(image_root, image),
            "text": caption,
            "label": label,
            "answers": ["true" if label else "false"],
        }

    return convert_all(jsonl_entries(ann_path, report), convert, report)


@register("hateful_memes")
def parse_hateful_memes(
    ann_path: PathLike, image_root: PathLike, report: ParseReport
) -> list[Record]:
    """Hateful Memes: the meme text under `text`, `label` 0/1 and the answer "yes"/"no" where
    released; `img` ("img/<id>.png") is relative to the zip's data/ folder, the image_root."""

    def convert(where: str, entry: Any) -> Record:
        """One jsonl row `{"id", "img", "text", "label"?}` -> a record."""
        record = {
            "id": str(field(entry, "id")),
            "image": join(image_root, field(entry, "img", str)),
            "text": field(entry, "text", str),
        }
        if "label" in entry:  # absent in the unseen test split
            record["label"] = _binary_label(entry["label"])
            # The answer the prompt asks for ("Is it hateful?"): the training target, and the
            # first of the ranked candidates ("yes", "no") at evaluation.
            record["answers"] = ["yes" if record["label"] else "no"]
        return record

    return convert_all(jsonl_entries(ann_path, report), convert, report)
