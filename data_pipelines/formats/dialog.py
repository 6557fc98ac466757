"""Dialogs and instruction conversations: Visual Dialog and LLaVA-Instruct-150K.

| format         | file(s)                                                                        |
|----------------|--------------------------------------------------------------------------------|
| visdial        | visdial_1.0_*.json `{"split", "data": {"dialogs", "questions", "answers"}}`   |
| llava_instruct | llava_instruct_150k.json & parts `[{"id", "image", "conversations"}]`          |
|                | (option `turns`: "all" = one example per turn, "first" = LAVIS's first turn)  |

Both give one record per round/turn with `question`, `answers` and `dialog`: the earlier
[question, answer] pairs of the same conversation.
"""

from __future__ import annotations

import os
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
    join,
    layout_error,
    load_json,
    register,
)

# The file's "split" value -> where its images are, relative to image_root. val/test: image_root
# is the unzipped VisualDialog_<split>2018/ folder. v1.0 train dialogs are on COCO 2014 images,
# train2014 and val2014 both: image_root is the COCO image root, and the first pattern whose file
# exists is taken.
_VISDIAL_IMAGES = {
    "val2018": ("VisualDialog_val2018_{image_id:012d}.jpg",),
    "test2018": ("VisualDialog_test2018_{image_id:012d}.jpg",),
    "train2018": (
        "train2014/COCO_train2014_{image_id:012d}.jpg",
        "val2014/COCO_val2014_{image_id:012d}.jpg",
    ),
}


@register("visdial")
def parse_visdial(
    ann_path: PathLike, image_root: PathLike, report: ParseReport, image_pattern: str | None = None
) -> list[Record]:
    """One record per round that has answer options (every round in train/val, the last in
    test), with the earlier rounds as `dialog` history."""
    data = load_json(ann_path)
    body = data.get("data") if isinstance(data, dict) else None
    if not isinstance(body, dict) or not all(
        isinstance(body.get(k), list) for k in ("dialogs", "questions", "answers")
    ):
        raise layout_error(ann_path, '{"split", "data": {"dialogs", "questions", "answers"}}')
    split = str(data.get("split"))
    if image_pattern is not None:
        patterns: tuple[str, ...] = (image_pattern,)
    elif split in _VISDIAL_IMAGES:
        patterns = _VISDIAL_IMAGES[split]
    else:
        raise ParseError(
            f"{ann_path}: split {split!r} is not one of {sorted(_VISDIAL_IMAGES)}; pass "
            "image_pattern= (e.g. '{image_id:012d}.jpg') for this file's images"
        )
    questions, answers = body["questions"], body["answers"]

    def image_path(image_id: int) -> str:
        """The first of the split's patterns whose file exists (the last one if none does)."""
        candidates = [join(image_root, p.format(image_id=image_id)) for p in patterns]
        return next((c for c in candidates if os.path.exists(c)), candidates[-1])

    def convert(where: str, dialog: Any) -> list[Record]:
        """One dialog `{"image_id", "caption", "dialog": [rounds]}` -> one record per scored round."""
        image_id = field(dialog, "image_id", int)
        image = image_path(image_id)
        history, records = [], []
        for round_index, turn in enumerate(field(dialog, "dialog", list)):
            question = questions[field(turn, "question", int)]
            answer = answers[turn["answer"]] if "answer" in turn else None
            if "answer_options" in turn:
                options = [answers[i] for i in field(turn, "answer_options", list)]
                record = {
                    "id": f"{image_id}_{round_index}",
                    "image": image,
                    "captions": [field(dialog, "caption", str)],
                    "question": question,
                    "dialog": [list(pair) for pair in history],
                    "answer_options": options,
                }
                if "gt_index" in turn:
                    gt = field(turn, "gt_index", int)
                    if not 0 <= gt < len(options):
                        raise EntryError(
                            f"round {round_index}: gt_index {gt} outside the "
                            f"{len(options)} answer options"
                        )
                    record["gt_index"] = gt
                if answer is not None:
                    record["answers"] = [answer]
                records.append(record)
            if answer is not None:
                history.append([question, answer])
        return records

    return convert_all(indexed(body["dialogs"]), convert, report)


LLAVA_TURNS = ("all", "first")


@register("llava_instruct")
def parse_llava_instruct(
    ann_path: PathLike, image_root: PathLike, report: ParseReport, turns: str = "all"
) -> list[Record]:
    """LLaVA-Instruct: one training record per human/gpt turn pair.

    `turns="all"` (default): every turn is an example, its earlier turns as `dialog` context, so
    a 4-turn conversation gives 4 examples. `turns="first"`: only the first pair, as LAVIS's
    `LLaVA150kInstructDataset` reads the file. Records: `question` (the human turn, "<image>"
    removed: the image goes through the Q-Former), `answers` ([the gpt turn]), `dialog` (earlier
    [question, answer] pairs). `image` is relative to COCO train2017/ (the image_root).
    """
    if turns not in LLAVA_TURNS:
        raise ValueError(f"llava_instruct: turns must be one of {LLAVA_TURNS}, got {turns!r}")
    data = load_json(ann_path)
    if not isinstance(data, list):
        raise layout_error(ann_path, 'a list of {"id", "image", "conversations"}')

    def convert(where: str, entry: Any) -> list[Record]:
        """One conversation `{"id", "image", "conversations": [{"from", "value"}, ...]}` ->
        one record per turn pair."""
        messages = field(entry, "conversations", list)
        if not messages or len(messages) % 2:
            raise EntryError(
                f"'conversations' should hold human/gpt pairs, got {len(messages)} turns"
            )
        pairs = []
        for i in range(0, len(messages), 2):
            human, gpt = messages[i], messages[i + 1]
            if field(human, "from", str) != "human" or field(gpt, "from", str) != "gpt":
                raise EntryError(
                    f"turn {i}: expected 'human' then 'gpt', got "
                    f"'{human['from']}' then '{gpt['from']}'"
                )
            question = field(human, "value", str).replace("<image>", "").strip()
            pairs.append([question, field(gpt, "value", str).strip()])
        conversation_id, image = (
            str(field(entry, "id")),
            join(image_root, field(entry, "image", str)),
        )
        return [
            {
                "id": f"{conversation_id}_{k}",
                "image": image,
                "question": question,
                "answers": [answer],
                "dialog": [list(p) for p in pairs[:k]],
            }
            for k, (question, answer) in enumerate(pairs[: 1 if turns == "first" else None])
        ]

    return convert_all(indexed(data), convert, report)
