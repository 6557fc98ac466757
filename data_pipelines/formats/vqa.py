"""Question answering on images: VQAv2 / OK-VQA, A-OKVQA, GQA, VizWiz, TextVQA, OCR-VQA.

| format         | file(s)                                                                        |
|----------------|--------------------------------------------------------------------------------|
| vqav2 / okvqa  | (questions.json, annotations.json) pair; questions alone (test); or LAVIS     |
|                | `[{"question_id", "question", "answer": list, "image"}]`                      |
| aokvqa         | aokvqa_v1p0_*.json `[{"question_id", "image_id", "split", "question",          |
|                | "choices", "correct_choice_idx", "direct_answers"}]` (+ optional "image")     |
| gqa            | *_balanced_questions.json `{qid: {"imageId", "question", "answer"}}`           |
| vizwiz         | Annotations/*.json `[{"image", "question", "answers": [{"answer"}]}]`          |
| textvqa        | TextVQA_0.5.1_*.json `{"data": [...]}`; OCR tokens from the entry's           |
|                | "ocr_tokens" or option `ocr_path` (TextVQA_Rosetta_OCR_v0.2_*.json)           |
| ocrvqa         | dataset.json `{image_id: {"imageURL", "questions", "answers", "split"}}`       |
|                | (option `split`: 1/2/3 or "train"/"val"/"test"); no OCR tokens are published  |
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
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
    keyed,
    layout_error,
    load_json,
    load_rosetta_ocr,
    register,
    str_list,
)


# OK-VQA ships in the VQA format (questions + annotations), so one parser serves both.
@register("vqav2", "okvqa", several_files=True)
def parse_vqav2(
    ann_path: PathLike | Sequence[PathLike], image_root: PathLike, report: ParseReport
) -> list[Record]:
    """VQAv2 / OK-VQA: the official (questions, annotations) pair, questions alone, or LAVIS."""
    paths = [ann_path] if isinstance(ann_path, (str, os.PathLike)) else list(ann_path)
    questions = load_json(paths[0])
    if isinstance(questions, list):
        if len(paths) > 1:
            raise ParseError(f"{paths[0]} is a LAVIS-style list; it takes no annotations file")
        return convert_all(indexed(questions), _lavis_vqa(image_root), report)
    if not isinstance(questions, dict) or not isinstance(questions.get("questions"), list):
        raise layout_error(paths[0], 'an object with a "questions" list, or a LAVIS list')
    subtype = questions.get("data_subtype")
    if not isinstance(subtype, str):
        raise ParseError(
            f"{paths[0]}: missing field 'data_subtype' (e.g. \"train2014\"), needed "
            "for the COCO image file names"
        )
    answers_by_qid: dict[Any, list[str]] | None = None
    if len(paths) > 1:
        annotations = load_json(paths[1])
        if not isinstance(annotations, dict) or not isinstance(
            annotations.get("annotations"), list
        ):
            raise layout_error(paths[1], 'an object with an "annotations" list')
        answers_by_qid = {}
        ann_report = ParseReport(os.fspath(paths[1]))

        def index_answers(where: str, ann: Any) -> list:
            """One annotation `{"question_id", "answers": [{"answer"}]}` -> its answers, by question."""
            answers_by_qid[field(ann, "question_id")] = [
                field(a, "answer", str) for a in field(ann, "answers", list)
            ]
            return []

        convert_all(indexed(annotations["annotations"]), index_answers, ann_report)
        report.merge_errors(ann_report)

    def convert(where: str, q: Any) -> Record:
        """One question `{"question_id", "image_id", "question"}` -> a record (+ its answers)."""
        qid, image_id = field(q, "question_id", int), field(q, "image_id", int)
        record = {
            "id": str(qid),
            "question": field(q, "question", str),
            "image": join(image_root, f"{subtype}/COCO_{subtype}_{image_id:012d}.jpg"),
        }
        if answers_by_qid is not None:
            if qid not in answers_by_qid:
                raise EntryError(f"question_id {qid} has no entry in {paths[1]}")
            record["answers"] = answers_by_qid[qid]
        return record

    return convert_all(indexed(questions["questions"]), convert, report)


def _lavis_vqa(image_root: PathLike) -> Callable[[str, Any], Record]:
    def convert(where: str, entry: Any) -> Record:
        """One LAVIS row `{"question_id", "image", "question", "answer"?}` -> a record."""
        record = {
            "id": str(field(entry, "question_id")),
            "image": join(image_root, field(entry, "image", str)),
            "question": field(entry, "question", str),
        }
        if "answer" in entry:
            answer = field(entry, "answer", (str, list))
            record["answers"] = [answer] if isinstance(answer, str) else str_list(entry, "answer")
        return record

    return convert


@register("aokvqa")
def parse_aokvqa(ann_path: PathLike, image_root: PathLike, report: ParseReport) -> list[Record]:
    """A-OKVQA: choices with the correct index and the direct answers (absent in test)."""
    data = load_json(ann_path)
    if not isinstance(data, list):
        raise layout_error(ann_path, "a list of questions (aokvqa_v1p0_*.json)")

    def convert(where: str, entry: Any) -> Record:
        """One A-OKVQA question -> a record; the image from "image" or from split + image_id."""
        if "image" in entry:  # LAVIS adds the relative path
            relative = field(entry, "image", str)
        else:  # official: COCO 2017 images, e.g. val2017/000000123456.jpg
            relative = f"{field(entry, 'split', str)}2017/{field(entry, 'image_id', int):012d}.jpg"
        choices = str_list(entry, "choices")
        record = {
            "id": str(field(entry, "question_id")),
            "image": join(image_root, relative),
            "question": field(entry, "question", str),
            "choices": choices,
        }
        if entry.get("correct_choice_idx") is not None:  # absent in test
            index = field(entry, "correct_choice_idx", int)
            if not 0 <= index < len(choices):
                raise EntryError(f"correct_choice_idx {index} outside the {len(choices)} choices")
            record["answer_index"] = index
        if entry.get("direct_answers") is not None:
            record["answers"] = str_list(entry, "direct_answers")
        return record

    return convert_all(indexed(data), convert, report)


@register("gqa")
def parse_gqa(ann_path: PathLike, image_root: PathLike, report: ParseReport) -> list[Record]:
    """GQA balanced questions: one short answer each (absent in test/challenge)."""
    data = load_json(ann_path)
    if not isinstance(data, dict):
        raise layout_error(ann_path, "an object {question_id: question} (GQA questions json)")

    def convert(where: str, item: tuple[str, Any]) -> Record:
        """(question id, `{"imageId", "question", "answer"?}`) -> a record."""
        qid, q = item
        record = {
            "id": str(qid),
            "image": join(image_root, f"{field(q, 'imageId', str)}.jpg"),
            "question": field(q, "question", str),
        }
        if "answer" in q:  # absent in the test/challenge splits
            record["answers"] = [field(q, "answer", str)]
        return record

    return convert_all(keyed(data), convert, report)


@register("vizwiz")
def parse_vizwiz(ann_path: PathLike, image_root: PathLike, report: ParseReport) -> list[Record]:
    """VizWiz-VQA: the ten crowd answers (absent in test)."""
    data = load_json(ann_path)
    if not isinstance(data, list):
        raise layout_error(ann_path, "a list of questions (VizWiz Annotations/*.json)")

    def convert(where: str, entry: Any) -> Record:
        """One VizWiz question `{"image", "question", "answers"?}` -> a record."""
        image = field(entry, "image", str)
        record = {
            "id": os.path.splitext(image)[0],
            "image": join(image_root, image),
            "question": field(entry, "question", str),
        }
        if "answers" in entry:
            record["answers"] = [field(a, "answer", str) for a in field(entry, "answers", list)]
        return record

    return convert_all(indexed(data), convert, report)


@register("textvqa")
def parse_textvqa(
    ann_path: PathLike, image_root: PathLike, report: ParseReport, ocr_path: PathLike | None = None
) -> list[Record]:
    """TextVQA: answers plus OCR tokens, from the entry or the Rosetta OCR file `ocr_path`; the
    image is `<image_root>/<image_id>.jpg` (image_root: train_images/ for train and val)."""
    data = load_json(ann_path)
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise layout_error(ann_path, 'an object with a "data" list (TextVQA_0.5.1_*.json)')
    ocr_by_image = load_rosetta_ocr(ocr_path) if ocr_path is not None else {}

    def convert(where: str, entry: Any) -> Record:
        """One TextVQA question -> a record with its OCR tokens when known."""
        image_id = field(entry, "image_id", str)
        # image_root is the image folder itself: train_images/ (train and val) or test_images/.
        record = {
            "id": str(field(entry, "question_id")),
            "question": field(entry, "question", str),
            "image": join(image_root, f"{image_id}.jpg"),
        }
        if "answers" in entry:
            record["answers"] = str_list(entry, "answers")
        if "ocr_tokens" in entry:
            record["ocr_tokens"] = str_list(entry, "ocr_tokens")
        elif image_id in ocr_by_image:
            record["ocr_tokens"] = list(ocr_by_image[image_id])
        return record

    return convert_all(indexed(data["data"]), convert, report)


_OCRVQA_SPLITS = {"train": 1, "val": 2, "test": 3}


@register("ocrvqa")
def parse_ocrvqa(
    ann_path: PathLike, image_root: PathLike, report: ParseReport, split: int | str | None = None
) -> list[Record]:
    """OCR-VQA: one record per (question, answer) of each book cover; `split` 1/2/3 or a name."""
    data = load_json(ann_path)
    if not isinstance(data, dict):
        raise layout_error(ann_path, "an object {image_id: {...}} (OCR-VQA dataset.json)")
    wanted = _OCRVQA_SPLITS.get(split, split) if split is not None else None

    def convert(where: str, item: tuple[str, Any]) -> list[Record] | None:
        """(image id, book entry) -> one record per question, or None outside the split."""
        image_id, entry = item
        if wanted is not None and field(entry, "split", int) != wanted:
            return None
        questions, answers = str_list(entry, "questions"), str_list(entry, "answers")
        if len(questions) != len(answers):
            raise EntryError(f"{len(questions)} questions but {len(answers)} answers")
        # The official downloader keeps the URL's extension.
        ext = os.path.splitext(str(entry.get("imageURL", "")))[1] or ".jpg"
        image = join(image_root, f"{image_id}{ext}")
        return [
            {"id": f"{image_id}_{i}", "image": image, "question": q, "answers": [a]}
            for i, (q, a) in enumerate(zip(questions, answers))
        ]

    return convert_all(keyed(data), convert, report)
