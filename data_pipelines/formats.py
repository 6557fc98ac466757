"""Parsers for the public annotation formats the paper's datasets ship in.

`parse(format_name, ann_path, image_root, dataset=..., max_errors=..., **options)` returns the
canonical example dicts of docs/CONTRACTS.md as a list whose `.report` (a `ParseReport`) counts
malformed entries (with the first few messages naming file and entry) and entries skipped on
purpose (e.g. ScienceQA questions without an image). A missing or unreadable file stops at once
with a message naming the path. Malformed entries are collected, then more than `max_errors` of
them (default 0) stop with all the first messages: big public files have the odd broken row, and
the caller decides how many it tolerates.

Accepted layouts (the public files as released; LAVIS's JSON where LAVIS uses its own):

| format         | file(s)                                                                        |
|----------------|--------------------------------------------------------------------------------|
| coco_caption   | LAVIS `[{"image", "caption": str or list}]`; COCO `{"images", "annotations"}`;  |
|                | Karpathy `{"images": [{"filename", "filepath"?, "sentences", "split"}]}`       |
|                | (option `split`: str or list, e.g. ["train", "restval"]). Also used as        |
|                | `nocaps` (COCO layout), `flickr30k` (Karpathy or LAVIS), `web_capfilt`.       |
| textcaps       | TextCaps_0.1_*.json `{"data": [{"image_id", "caption_str", "image_path"?}]}`  |
| vqav2 / okvqa  | (questions.json, annotations.json) pair; questions alone (test); or LAVIS     |
|                | `[{"question_id", "question", "answer": list, "image"}]`                      |
| aokvqa         | aokvqa_v1p0_*.json `[{"question_id", "image_id", "split", "question",          |
|                | "choices", "correct_choice_idx", "direct_answers"}]` (+ optional "image")     |
| gqa            | *_balanced_questions.json `{qid: {"imageId", "question", "answer"}}`           |
| vizwiz         | Annotations/*.json `[{"image", "question", "answers": [{"answer"}]}]`          |
| textvqa        | TextVQA_0.5.1_*.json `{"data": [...]}`; OCR tokens from the entry's           |
|                | "ocr_tokens" or option `ocr_path` (TextVQA_Rosetta_OCR_v0.2_*.json)           |
| ocrvqa         | dataset.json `{image_id: {"imageURL", "questions", "answers", "split"}}`       |
|                | (option `split`: 1/2/3 or "train"/"val"/"test")                               |
| iconqa         | problems.json `{pid: {"question", "choices"?, "answer", "ques_type", "split"}}`|
|                | (option `ques_types`, e.g. ["choose_txt"])                                    |
| scienceqa      | problems.json `{pid: {..., "image": name or null, "split"}}` (option `split`) |
| vsr            | *.jsonl `{"image", "caption", "label"}`                                        |
| hateful_memes  | *.jsonl `{"id", "img", "label"?, "text"}`                                      |
| visdial        | visdial_1.0_*.json `{"split", "data": {"dialogs", "questions", "answers"}}`   |
| msvd_qa        | *_qa.json `[{"id", "question", "answer", "video_id"}]`: frames in vid{N}/      |
| msrvtt_qa      | same; frames in video{N}/                                                      |
| ivqa           | *.csv: video_id, question, answer1..answer5 (start, end optional)              |
| llava_instruct | llava_instruct_150k.json & parts `[{"id", "image", "conversations"}]`          |

Video records list the pre-extracted frames found under `image_root/<video dir>/` (sorted);
a video without frames is a malformed entry.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

Record = dict[str, Any]
PathLike = str | os.PathLike
MAX_MESSAGES = 20


class ParseError(ValueError):
    """An annotation file cannot be used (bad JSON, wrong layout, too many broken entries)."""


class EntryError(ValueError):
    """One entry is malformed; collected into the report, the rest of the file goes on."""


@dataclasses.dataclass
class ParseReport:
    path: str
    num_records: int = 0
    num_skipped: int = 0  # entries left out on purpose (e.g. no image, other split)
    num_errors: int = 0  # malformed entries
    messages: list[str] = dataclasses.field(default_factory=list)

    def add_error(self, where: str, problem: str) -> None:
        self.num_errors += 1
        if len(self.messages) < MAX_MESSAGES:
            self.messages.append(f"{self.path}: {where}: {problem}")

    def check(self, max_errors: int) -> None:
        """Stop when more than `max_errors` entries were malformed."""
        if self.num_errors > max_errors:
            raise ParseError(
                f"{self.num_errors} malformed entries in {self.path} (allowed: "
                f"{max_errors}); first ones:\n  " + "\n  ".join(self.messages)
            )

    def summary(self) -> str:
        return (
            f"{self.path}: {self.num_records} records, {self.num_skipped} skipped, "
            f"{self.num_errors} malformed"
        )


# --- small helpers ------------------------------------------------------------------------------


def _read_text(path: PathLike) -> str:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"annotation file not found: {os.fspath(path)}")
    with open(path, encoding="utf-8") as f:
        return f.read()


def _load_json(path: PathLike) -> Any:
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise ParseError(
            f"{os.fspath(path)}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}"
        ) from None


def _layout_error(path: PathLike, expected: str) -> ParseError:
    return ParseError(f"{os.fspath(path)}: unexpected layout, expected {expected}")


def _get(entry: Any, key: str, kind: type | tuple[type, ...] = object) -> Any:
    """entry[key], checked for presence and type; raises EntryError naming the field."""
    if not isinstance(entry, Mapping):
        raise EntryError(f"expected an object, got {type(entry).__name__}")
    if key not in entry or entry[key] is None:
        raise EntryError(f"missing field '{key}'")
    value = entry[key]
    # bool is an int subclass in Python; a true/false where a number belongs is an error.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise EntryError(f"field '{key}' should be {names}, got {type(value).__name__}")
    return value


def _str_list(entry: Mapping, key: str) -> list[str]:
    values = _get(entry, key, list)
    if not all(isinstance(v, str) for v in values):
        raise EntryError(f"field '{key}' should be a list of strings")
    return values


def _join(root: PathLike, relative: str) -> str:
    return os.path.join(os.fspath(root), relative) if os.fspath(root) else relative


def _convert_all(
    items: Iterable[tuple[str, Any]], convert: Callable[[str, Any], Any], report: ParseReport
) -> list[Record]:
    """Run `convert(key, entry)` over (where, entry) pairs. It returns a record, a list of
    records, or None (skipped on purpose); EntryError/KeyError/TypeError/ValueError become
    report entries naming `where`."""
    records: list[Record] = []
    for where, entry in items:
        try:
            out = convert(where, entry)
        except (EntryError, KeyError, TypeError, ValueError, IndexError) as e:
            problem = str(e) if isinstance(e, EntryError) else f"{type(e).__name__}: {e}"
            report.add_error(where, problem)
            continue
        if out is None:
            report.num_skipped += 1
        elif isinstance(out, list):
            records.extend(out)
        else:
            records.append(out)
    return records


def _indexed(entries: Sequence[Any]) -> Iterable[tuple[str, Any]]:
    return ((f"entry #{i}", e) for i, e in enumerate(entries))


def _keyed(entries: Mapping[str, Any]) -> Iterable[tuple[str, Any]]:
    return ((f"key '{k}'", (k, v)) for k, v in entries.items())


def _single_path(ann_path: PathLike | Sequence[PathLike], fmt: str) -> PathLike:
    if isinstance(ann_path, (str, os.PathLike)):
        return ann_path
    if len(ann_path) == 1:
        return ann_path[0]
    raise ParseError(f"format '{fmt}' takes one annotation file, got {list(ann_path)}")


def _as_set(value: Any) -> set | None:
    if value is None:
        return None
    return {value} if isinstance(value, (str, int)) else set(value)


# --- captions -----------------------------------------------------------------------------------


def parse_captions(
    ann_path: PathLike,
    image_root: PathLike,
    report: ParseReport,
    split: str | Sequence[str] | None = None,
) -> list[Record]:
    """LAVIS list, official COCO/NoCaps, or Karpathy json -> one record per image with all its
    captions (the pipeline samples one per step)."""
    data = _load_json(ann_path)
    if isinstance(data, list):
        return _lavis_captions(data, image_root, report)
    if isinstance(data, dict) and isinstance(data.get("images"), list):
        images = data["images"]
        if images and isinstance(images[0], dict) and "sentences" in images[0]:
            return _karpathy_captions(images, image_root, report, _as_set(split))
        return _coco_captions(images, data.get("annotations"), image_root, report)
    raise _layout_error(ann_path, 'a list of {"image", "caption"} or an object with "images"')


def _lavis_captions(entries: list, image_root: PathLike, report: ParseReport) -> list[Record]:
    by_image: dict[str, Record] = {}

    def convert(where: str, entry: Any) -> list:
        image = _get(entry, "image", str)
        caption = _get(entry, "caption", (str, list))
        captions = [caption] if isinstance(caption, str) else _str_list(entry, "caption")
        record = by_image.setdefault(
            image,
            {
                "id": str(entry.get("image_id", image)),
                "image": _join(image_root, image),
                "captions": [],
            },
        )
        record["captions"].extend(captions)
        return []  # records are collected per image in by_image

    _convert_all(_indexed(entries), convert, report)
    return list(by_image.values())


def _coco_captions(
    images: list, annotations: list | None, image_root: PathLike, report: ParseReport
) -> list[Record]:
    by_id: dict[Any, Record] = {}

    def add_image(where: str, image: Any) -> list:
        by_id[_get(image, "id")] = {
            "id": str(image["id"]),
            "image": _join(image_root, _get(image, "file_name", str)),
        }
        return []

    def add_caption(where: str, ann: Any) -> list:
        image_id = _get(ann, "image_id")
        if image_id not in by_id:
            raise EntryError(f"image_id {image_id!r} is not in 'images'")
        by_id[image_id].setdefault("captions", []).append(_get(ann, "caption", str))
        return []

    _convert_all(((f"images #{i}", e) for i, e in enumerate(images)), add_image, report)
    if annotations is not None:
        _convert_all(
            ((f"annotations #{i}", e) for i, e in enumerate(annotations)), add_caption, report
        )
    return list(by_id.values())


def _karpathy_captions(
    images: list, image_root: PathLike, report: ParseReport, splits: set | None
) -> list[Record]:
    def convert(where: str, image: Any) -> Record | None:
        if splits is not None and _get(image, "split", str) not in splits:
            return None
        filename = _get(image, "filename", str)
        relative = os.path.join(image["filepath"], filename) if image.get("filepath") else filename
        captions = [_get(s, "raw", str).strip() for s in _get(image, "sentences", list)]
        return {
            "id": str(image.get("cocoid", image.get("imgid", filename))),
            "image": _join(image_root, relative),
            "captions": captions,
        }

    return _convert_all(_indexed(images), convert, report)


def parse_textcaps(ann_path: PathLike, image_root: PathLike, report: ParseReport) -> list[Record]:
    data = _load_json(ann_path)
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise _layout_error(ann_path, 'an object with a "data" list (TextCaps_0.1_*.json)')
    by_image: dict[str, Record] = {}

    def convert(where: str, entry: Any) -> list:
        image_id = _get(entry, "image_id", str)
        relative = entry.get("image_path") or f"{image_id}.jpg"
        record = by_image.setdefault(
            image_id, {"id": image_id, "image": _join(image_root, relative)}
        )
        if "caption_str" in entry:  # absent in the test split
            record.setdefault("captions", []).append(_get(entry, "caption_str", str))
        return []

    _convert_all(_indexed(data["data"]), convert, report)
    return list(by_image.values())


# --- question answering -------------------------------------------------------------------------


def parse_vqav2(
    ann_path: PathLike | Sequence[PathLike], image_root: PathLike, report: ParseReport
) -> list[Record]:
    """VQAv2 / OK-VQA: the official (questions, annotations) pair, questions alone, or LAVIS."""
    paths = [ann_path] if isinstance(ann_path, (str, os.PathLike)) else list(ann_path)
    questions = _load_json(paths[0])
    if isinstance(questions, list):
        if len(paths) > 1:
            raise ParseError(f"{paths[0]} is a LAVIS-style list; it takes no annotations file")
        return _convert_all(_indexed(questions), _lavis_vqa(image_root), report)
    if not isinstance(questions, dict) or not isinstance(questions.get("questions"), list):
        raise _layout_error(paths[0], 'an object with a "questions" list, or a LAVIS list')
    subtype = questions.get("data_subtype")
    if not isinstance(subtype, str):
        raise ParseError(
            f"{paths[0]}: missing field 'data_subtype' (e.g. \"train2014\"), needed "
            "for the COCO image file names"
        )
    answers_by_qid: dict[Any, list[str]] | None = None
    if len(paths) > 1:
        annotations = _load_json(paths[1])
        if not isinstance(annotations, dict) or not isinstance(
            annotations.get("annotations"), list
        ):
            raise _layout_error(paths[1], 'an object with an "annotations" list')
        answers_by_qid = {}
        ann_report = ParseReport(os.fspath(paths[1]))

        def index_answers(where: str, ann: Any) -> list:
            answers_by_qid[_get(ann, "question_id")] = [
                _get(a, "answer", str) for a in _get(ann, "answers", list)
            ]
            return []

        _convert_all(_indexed(annotations["annotations"]), index_answers, ann_report)
        report.num_errors += ann_report.num_errors
        report.messages.extend(ann_report.messages[: MAX_MESSAGES - len(report.messages)])

    def convert(where: str, q: Any) -> Record:
        qid, image_id = _get(q, "question_id", int), _get(q, "image_id", int)
        record = {
            "id": str(qid),
            "question": _get(q, "question", str),
            "image": _join(image_root, f"{subtype}/COCO_{subtype}_{image_id:012d}.jpg"),
        }
        if answers_by_qid is not None:
            if qid not in answers_by_qid:
                raise EntryError(f"question_id {qid} has no entry in {paths[1]}")
            record["answers"] = answers_by_qid[qid]
        return record

    return _convert_all(_indexed(questions["questions"]), convert, report)


def _lavis_vqa(image_root: PathLike) -> Callable[[str, Any], Record]:
    def convert(where: str, entry: Any) -> Record:
        record = {
            "id": str(_get(entry, "question_id")),
            "image": _join(image_root, _get(entry, "image", str)),
            "question": _get(entry, "question", str),
        }
        if "answer" in entry:
            answer = _get(entry, "answer", (str, list))
            record["answers"] = [answer] if isinstance(answer, str) else _str_list(entry, "answer")
        return record

    return convert


def parse_aokvqa(ann_path: PathLike, image_root: PathLike, report: ParseReport) -> list[Record]:
    data = _load_json(ann_path)
    if not isinstance(data, list):
        raise _layout_error(ann_path, "a list of questions (aokvqa_v1p0_*.json)")

    def convert(where: str, entry: Any) -> Record:
        if "image" in entry:  # LAVIS adds the relative path
            relative = _get(entry, "image", str)
        else:  # official: COCO 2017 images, e.g. val2017/000000123456.jpg
            relative = f"{_get(entry, 'split', str)}2017/{_get(entry, 'image_id', int):012d}.jpg"
        choices = _str_list(entry, "choices")
        record = {
            "id": str(_get(entry, "question_id")),
            "image": _join(image_root, relative),
            "question": _get(entry, "question", str),
            "choices": choices,
        }
        if entry.get("correct_choice_idx") is not None:  # absent in test
            index = _get(entry, "correct_choice_idx", int)
            if not 0 <= index < len(choices):
                raise EntryError(f"correct_choice_idx {index} outside the {len(choices)} choices")
            record["answer_index"] = index
        if entry.get("direct_answers") is not None:
            record["answers"] = _str_list(entry, "direct_answers")
        return record

    return _convert_all(_indexed(data), convert, report)


def parse_gqa(ann_path: PathLike, image_root: PathLike, report: ParseReport) -> list[Record]:
    data = _load_json(ann_path)
    if not isinstance(data, dict):
        raise _layout_error(ann_path, "an object {question_id: question} (GQA questions json)")

    def convert(where: str, item: tuple[str, Any]) -> Record:
        qid, q = item
        record = {
            "id": str(qid),
            "image": _join(image_root, f"{_get(q, 'imageId', str)}.jpg"),
            "question": _get(q, "question", str),
        }
        if "answer" in q:  # absent in the test/challenge splits
            record["answers"] = [_get(q, "answer", str)]
        return record

    return _convert_all(_keyed(data), convert, report)


def parse_vizwiz(ann_path: PathLike, image_root: PathLike, report: ParseReport) -> list[Record]:
    data = _load_json(ann_path)
    if not isinstance(data, list):
        raise _layout_error(ann_path, "a list of questions (VizWiz Annotations/*.json)")

    def convert(where: str, entry: Any) -> Record:
        image = _get(entry, "image", str)
        record = {
            "id": os.path.splitext(image)[0],
            "image": _join(image_root, image),
            "question": _get(entry, "question", str),
        }
        if "answers" in entry:
            record["answers"] = [_get(a, "answer", str) for a in _get(entry, "answers", list)]
        return record

    return _convert_all(_indexed(data), convert, report)


def parse_textvqa(
    ann_path: PathLike, image_root: PathLike, report: ParseReport, ocr_path: PathLike | None = None
) -> list[Record]:
    data = _load_json(ann_path)
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise _layout_error(ann_path, 'an object with a "data" list (TextVQA_0.5.1_*.json)')
    ocr_by_image: dict[str, list[str]] = {}
    if ocr_path is not None:
        ocr = _load_json(ocr_path)
        if not isinstance(ocr, dict) or not isinstance(ocr.get("data"), list):
            raise _layout_error(ocr_path, 'an object with a "data" list (Rosetta OCR json)')
        ocr_by_image = {
            e["image_id"]: e["ocr_tokens"]
            for e in ocr["data"]
            if isinstance(e, dict) and "image_id" in e and "ocr_tokens" in e
        }

    def convert(where: str, entry: Any) -> Record:
        image_id = _get(entry, "image_id", str)
        # Train and val images both live in train_images/ in the official release.
        folder = "test_images" if entry.get("set_name") == "test" else "train_images"
        record = {
            "id": str(_get(entry, "question_id")),
            "question": _get(entry, "question", str),
            "image": _join(image_root, f"{folder}/{image_id}.jpg"),
        }
        if "answers" in entry:
            record["answers"] = _str_list(entry, "answers")
        if "ocr_tokens" in entry:
            record["ocr_tokens"] = _str_list(entry, "ocr_tokens")
        elif image_id in ocr_by_image:
            record["ocr_tokens"] = list(ocr_by_image[image_id])
        return record

    return _convert_all(_indexed(data["data"]), convert, report)


_OCRVQA_SPLITS = {"train": 1, "val": 2, "test": 3}


def parse_ocrvqa(
    ann_path: PathLike, image_root: PathLike, report: ParseReport, split: int | str | None = None
) -> list[Record]:
    data = _load_json(ann_path)
    if not isinstance(data, dict):
        raise _layout_error(ann_path, "an object {image_id: {...}} (OCR-VQA dataset.json)")
    wanted = _OCRVQA_SPLITS.get(split, split) if split is not None else None

    def convert(where: str, item: tuple[str, Any]) -> list[Record] | None:
        image_id, entry = item
        if wanted is not None and _get(entry, "split", int) != wanted:
            return None
        questions, answers = _str_list(entry, "questions"), _str_list(entry, "answers")
        if len(questions) != len(answers):
            raise EntryError(f"{len(questions)} questions but {len(answers)} answers")
        # The official downloader keeps the URL's extension.
        ext = os.path.splitext(str(entry.get("imageURL", "")))[1] or ".jpg"
        image = _join(image_root, f"{image_id}{ext}")
        return [
            {"id": f"{image_id}_{i}", "image": image, "question": q, "answers": [a]}
            for i, (q, a) in enumerate(zip(questions, answers))
        ]

    return _convert_all(_keyed(data), convert, report)


def parse_iconqa(
    ann_path: PathLike,
    image_root: PathLike,
    report: ParseReport,
    ques_types: Sequence[str] | None = None,
    split: str | None = None,
) -> list[Record]:
    data = _load_json(ann_path)
    if not isinstance(data, dict):
        raise _layout_error(ann_path, "an object {pid: problem} (IconQA problems.json)")
    types, splits = _as_set(ques_types), _as_set(split)

    def convert(where: str, item: tuple[str, Any]) -> Record | None:
        pid, p = item
        ques_type, p_split = _get(p, "ques_type", str), _get(p, "split", str)
        if (types is not None and ques_type not in types) or (splits and p_split not in splits):
            return None
        record = {
            "id": str(pid),
            "question": _get(p, "question", str),
            "image": _join(image_root, f"{p_split}/{ques_type}/{pid}/image.png"),
        }
        answer = _get(p, "answer")
        if "choices" in p:  # choose_txt / choose_img: the answer is an index
            record["choices"] = _str_list(p, "choices")
            index = int(answer)
            if not 0 <= index < len(record["choices"]):
                raise EntryError(f"answer {index} outside the {len(record['choices'])} choices")
            record["answer_index"] = index
        else:  # fill_in_blank: the answer is text
            record["answers"] = [str(answer)]
        return record

    return _convert_all(_keyed(data), convert, report)


def parse_scienceqa(
    ann_path: PathLike,
    image_root: PathLike,
    report: ParseReport,
    split: str | Sequence[str] | None = None,
) -> list[Record]:
    """ScienceQA (IMG): questions without an image are skipped (counted, not errors)."""
    data = _load_json(ann_path)
    if not isinstance(data, dict):
        raise _layout_error(ann_path, "an object {pid: problem} (ScienceQA problems.json)")
    splits = _as_set(split)

    def convert(where: str, item: tuple[str, Any]) -> Record | None:
        pid, p = item
        p_split = _get(p, "split", str)
        if not p.get("image") or (splits is not None and p_split not in splits):
            return None
        choices = _str_list(p, "choices")
        index = _get(p, "answer", int)
        if not 0 <= index < len(choices):
            raise EntryError(f"answer {index} outside the {len(choices)} choices")
        record = {
            "id": str(pid),
            "question": _get(p, "question", str),
            "choices": choices,
            "answer_index": index,
            "image": _join(image_root, f"{p_split}/{pid}/{_get(p, 'image', str)}"),
        }
        if p.get("hint"):  # the textual context shown with the question
            record["text"] = _get(p, "hint", str)
        return record

    return _convert_all(_keyed(data), convert, report)


# --- jsonl / csv formats ------------------------------------------------------------------------


def _jsonl_entries(path: PathLike, report: ParseReport) -> list[tuple[str, Any]]:
    entries = []
    for line_number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entries.append((f"line {line_number}", json.loads(line)))
        except json.JSONDecodeError as e:
            report.add_error(f"line {line_number}", f"invalid JSON: {e.msg}")
    return entries


def _binary_label(value: Any) -> int:
    if isinstance(value, bool) or value in (0, 1):
        return int(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "0", "1"):
        return int(value.strip().lower() in ("true", "1"))
    raise EntryError(f"field 'label' should be 0/1 or true/false, got {value!r}")


def parse_vsr(ann_path: PathLike, image_root: PathLike, report: ParseReport) -> list[Record]:
    def convert(where: str, entry: Any) -> Record:
        image, caption = _get(entry, "image", str), _get(entry, "caption", str)
        label = _binary_label(_get(entry, "label"))
        return {
            "id": f"{os.path.splitext(image)[0]}_{where.split()[-1]}",
            "image": _join(image_root, image),
            "text": caption,
            "label": label,
            "answers": ["true" if label else "false"],
        }

    return _convert_all(_jsonl_entries(ann_path, report), convert, report)


def parse_hateful_memes(
    ann_path: PathLike, image_root: PathLike, report: ParseReport
) -> list[Record]:
    def convert(where: str, entry: Any) -> Record:
        record = {
            "id": str(_get(entry, "id")),
            "image": _join(image_root, _get(entry, "img", str)),
            "text": _get(entry, "text", str),
        }
        if "label" in entry:  # absent in the unseen test split
            record["label"] = _binary_label(entry["label"])
        return record

    return _convert_all(_jsonl_entries(ann_path, report), convert, report)


# --- dialogs ------------------------------------------------------------------------------------

_VISDIAL_IMAGES = {
    "val": "VisualDialog_val2018/VisualDialog_val2018_{image_id:012d}.jpg",
    "test": "VisualDialog_test2018/VisualDialog_test2018_{image_id:012d}.jpg",
    # v1.0 train uses COCO train2014+val2014 images; pass image_pattern= for your layout.
    "train": "COCO_train2014_{image_id:012d}.jpg",
}


def parse_visdial(
    ann_path: PathLike, image_root: PathLike, report: ParseReport, image_pattern: str | None = None
) -> list[Record]:
    """One record per round that has answer options (every round in train/val, the last in
    test), with the earlier rounds as `dialog` history."""
    data = _load_json(ann_path)
    body = data.get("data") if isinstance(data, dict) else None
    if not isinstance(body, dict) or not all(
        isinstance(body.get(k), list) for k in ("dialogs", "questions", "answers")
    ):
        raise _layout_error(ann_path, '{"split", "data": {"dialogs", "questions", "answers"}}')
    pattern = image_pattern or _VISDIAL_IMAGES.get(str(data.get("split")), "{image_id:012d}.jpg")
    questions, answers = body["questions"], body["answers"]

    def convert(where: str, dialog: Any) -> list[Record]:
        image_id = _get(dialog, "image_id", int)
        image = _join(image_root, pattern.format(image_id=image_id))
        history, records = [], []
        for round_index, turn in enumerate(_get(dialog, "dialog", list)):
            question = questions[_get(turn, "question", int)]
            answer = answers[turn["answer"]] if "answer" in turn else None
            if "answer_options" in turn:
                options = [answers[i] for i in _get(turn, "answer_options", list)]
                record = {
                    "id": f"{image_id}_{round_index}",
                    "image": image,
                    "captions": [_get(dialog, "caption", str)],
                    "question": question,
                    "dialog": [list(pair) for pair in history],
                    "answer_options": options,
                }
                if "gt_index" in turn:
                    gt = _get(turn, "gt_index", int)
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

    return _convert_all(_indexed(body["dialogs"]), convert, report)


def parse_llava_instruct(
    ann_path: PathLike, image_root: PathLike, report: ParseReport
) -> list[Record]:
    data = _load_json(ann_path)
    if not isinstance(data, list):
        raise _layout_error(ann_path, 'a list of {"id", "image", "conversations"}')

    def convert(where: str, entry: Any) -> Record:
        turns = _get(entry, "conversations", list)
        if not turns or len(turns) % 2:
            raise EntryError(f"'conversations' should hold human/gpt pairs, got {len(turns)} turns")
        dialog = []
        for i in range(0, len(turns), 2):
            human, gpt = turns[i], turns[i + 1]
            if _get(human, "from", str) != "human" or _get(gpt, "from", str) != "gpt":
                raise EntryError(
                    f"turn {i}: expected 'human' then 'gpt', got "
                    f"'{human['from']}' then '{gpt['from']}'"
                )
            # The image is fed through the Q-Former, not as an "<image>" token in the text.
            question = _get(human, "value", str).replace("<image>", "").strip()
            dialog.append([question, _get(gpt, "value", str).strip()])
        return {
            "id": str(_get(entry, "id")),
            "image": _join(image_root, _get(entry, "image", str)),
            "dialog": dialog,
        }

    return _convert_all(_indexed(data), convert, report)


# --- video QA -----------------------------------------------------------------------------------


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
    data = _load_json(ann_path)
    if not isinstance(data, list):
        raise _layout_error(ann_path, 'a list of {"id", "question", "answer", "video_id"}')
    frames = _FrameLister(image_root)

    def convert(where: str, entry: Any) -> Record:
        if "video" in entry:  # LAVIS-style file name, e.g. "video7010.mp4"
            video_dir = os.path.splitext(_get(entry, "video", str))[0]
        else:  # official: integer ids; frames extracted into vid{N}/ or video{N}/
            video_dir = f"{dir_prefix}{_get(entry, 'video_id', int)}"
        record = {
            "id": str(entry.get("id", entry.get("question_id", where))),
            "frames": frames(video_dir),
            "question": _get(entry, "question", str),
        }
        if "answer" in entry:
            record["answers"] = [_get(entry, "answer", str)]
        return record

    return _convert_all(_indexed(data), convert, report)


def parse_msvd_qa(ann_path: PathLike, image_root: PathLike, report: ParseReport) -> list[Record]:
    return _parse_video_qa(ann_path, image_root, report, "vid")


def parse_msrvtt_qa(ann_path: PathLike, image_root: PathLike, report: ParseReport) -> list[Record]:
    return _parse_video_qa(ann_path, image_root, report, "video")


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

    return _convert_all(rows, convert, report)


# --- registry -----------------------------------------------------------------------------------

PARSERS: dict[str, Callable[..., list[Record]]] = {
    "coco_caption": parse_captions,
    "web_capfilt": parse_captions,
    "nocaps": parse_captions,
    "flickr30k": parse_captions,
    "textcaps": parse_textcaps,
    "vqav2": parse_vqav2,
    "okvqa": parse_vqav2,  # OK-VQA ships in the VQA format (questions + annotations)
    "aokvqa": parse_aokvqa,
    "gqa": parse_gqa,
    "vizwiz": parse_vizwiz,
    "textvqa": parse_textvqa,
    "ocrvqa": parse_ocrvqa,
    "iconqa": parse_iconqa,
    "scienceqa": parse_scienceqa,
    "vsr": parse_vsr,
    "hateful_memes": parse_hateful_memes,
    "visdial": parse_visdial,
    "msvd_qa": parse_msvd_qa,
    "msrvtt_qa": parse_msrvtt_qa,
    "ivqa": parse_ivqa,
    "llava_instruct": parse_llava_instruct,
}


class ParsedRecords(list):
    """The records (a plain list, so callers can iterate it) plus the `report` of the parse."""

    def __init__(self, records: Iterable[Record], report: ParseReport) -> None:
        super().__init__(records)
        self.report = report


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
    if parser is not parse_vqav2:
        ann_path = _single_path(ann_path, format_name)
    label = (
        os.fspath(ann_path)
        if isinstance(ann_path, (str, os.PathLike))
        else " + ".join(os.fspath(p) for p in ann_path)
    )
    report = ParseReport(label)
    try:
        records = parser(ann_path, os.path.abspath(image_root), report, **options)
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
