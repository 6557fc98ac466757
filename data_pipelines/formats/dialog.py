"""Dialogs and instruction conversations: Visual Dialog and LLaVA-Instruct-150K.

| format         | file(s)                                                                        |
|----------------|--------------------------------------------------------------------------------|
| visdial        | visdial_1.0_*.json `{"split", "data": {"dialogs", "questions", "answers"}}`   |
| llava_instruct | llava_instruct_150k.json & parts `[{"id", "image", "conversations"}]`          |

Both give `dialog`: a list of [question, answer] pairs (earlier rounds, or the whole conversation).
"""

from __future__ import annotations

from typing import Any

from data_pipelines.formats.common import (
    EntryError,
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

_VISDIAL_IMAGES = {
    "val": "VisualDialog_val2018/VisualDialog_val2018_{image_id:012d}.jpg",
    "test": "VisualDialog_test2018/VisualDialog_test2018_{image_id:012d}.jpg",
    # v1.0 train uses COCO train2014+val2014 images; pass image_pattern= for your layout.
    "train": "COCO_train2014_{image_id:012d}.jpg",
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
    pattern = image_pattern or _VISDIAL_IMAGES.get(str(data.get("split")), "{image_id:012d}.jpg")
    questions, answers = body["questions"], body["answers"]

    def convert(where: str, dialog: Any) -> list[Record]:
        """One dialog `{"image_id", "caption", "dialog": [rounds]}` -> one record per scored round."""
        image_id = field(dialog, "image_id", int)
        image = join(image_root, pattern.format(image_id=image_id))
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


@register("llava_instruct")
def parse_llava_instruct(
    ann_path: PathLike, image_root: PathLike, report: ParseReport
) -> list[Record]:
    """LLaVA-Instruct: human/gpt turn pairs -> `dialog`; the "<image>" marker is dropped."""
    data = load_json(ann_path)
    if not isinstance(data, list):
        raise layout_error(ann_path, 'a list of {"id", "image", "conversations"}')

    def convert(where: str, entry: Any) -> Record:
        """One conversation `{"id", "image", "conversations": [{"from", "value"}, ...]}` -> a record."""
        turns = field(entry, "conversations", list)
        if not turns or len(turns) % 2:
            raise EntryError(f"'conversations' should hold human/gpt pairs, got {len(turns)} turns")
        dialog = []
        for i in range(0, len(turns), 2):
            human, gpt = turns[i], turns[i + 1]
            if field(human, "from", str) != "human" or field(gpt, "from", str) != "gpt":
                raise EntryError(
                    f"turn {i}: expected 'human' then 'gpt', got "
                    f"'{human['from']}' then '{gpt['from']}'"
                )
            # The image is fed through the Q-Former, not as an "<image>" token in the text.
            question = field(human, "value", str).replace("<image>", "").strip()
            dialog.append([question, field(gpt, "value", str).strip()])
        return {
            "id": str(field(entry, "id")),
            "image": join(image_root, field(entry, "image", str)),
            "dialog": dialog,
        }

    return convert_all(indexed(data), convert, report)
