"""Your own data: the files users have, read into the canonical records the 26 datasets give.

| layout                 | what is read                                                            |
|------------------------|-------------------------------------------------------------------------|
| `*.jsonl`              | one JSON object per line                                                |
| `*.json`               | a list of objects (or `{"data": [...]}`)                                |
| `*.csv`, `*.tsv`       | a header row; list fields as a JSON list (`["a", "b"]`) or `a|b|c`      |
| `*.parquet`            | pyarrow; Hugging Face Image columns (`{"bytes", "path"}`) included      |
| a `save_to_disk` folder| `datasets.load_from_disk` (option `split` for a DatasetDict)            |
| an imagefolder         | a folder with `metadata.jsonl` / `metadata.csv`; `file_name` is the     |
|                        | image, relative to that folder                                          |
| a folder of images     | prediction only (`require_answer=False`): one row per image             |

Several files or folders are joined with "+" (or given as a list). Columns are found by their
common spellings (`FIELDS`), or named with `columns` ({field: column}, or the string
"field:column|field:column"): `image` (a path relative to the annotation file's folder, or to
`images=`; a bucket path such as gs://...; or embedded bytes, Hugging Face's Image struct
`{"bytes", "path"}`), or `video`; `question` (the instruction); `answers` (a string or a list);
optional `choices` (the answer as text or as an index into them); optional `conversations`
(LLaVA style `[{"from": "human"|"gpt", "value"}]`, or `{"role", "content"}`: one record per turn,
the earlier turns as `dialog` context); `id`.

Records: `id`, `image` (path) or `image_bytes` (+ `image_path`, its name), or `video`;
`question`; `answers`; with choices `choices` + `answer_index`; with `captions=True` the answers
are also the `captions` (caption tasks). A row without an image or an answer is reported naming
file and row and counted (the caller's `max_bad_fraction` decides); a file without an image,
instruction or answer column stops at once, naming the columns it has.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from data_pipelines.formats.common import (
    EntryError,
    ParseError,
    ParseReport,
    PathLike,
    Record,
    convert_all,
    register,
)
from data_pipelines.formats.user_files import read_rows

# Canonical field -> the column names recognised for it, in order of preference.
FIELDS: dict[str, tuple[str, ...]] = {
    "image": ("image", "image_path", "img", "file_name", "filename", "image_file", "path"),
    "video": ("video", "video_path", "frames"),
    "question": ("instruction", "question", "prompt", "text_input", "query"),
    "answers": ("answer", "answers", "output", "text_output", "caption", "captions", "response"),
    "choices": ("choices", "options", "candidates"),
    "conversations": ("conversations", "conversation", "messages"),
    "id": ("id", "question_id", "qid", "uid", "key"),
}
HUMAN_ROLES, MODEL_ROLES = ("human", "user"), ("gpt", "assistant", "model")


def parse_columns(columns: Mapping[str, str] | str | None) -> dict[str, str]:
    """{field: column} from a mapping or "field:column|field:column" (";" also separates)."""
    if not columns:
        return {}
    if isinstance(columns, str):
        pairs = [p for p in columns.replace(";", "|").split("|") if p.strip()]
        if not all(":" in p for p in pairs):
            raise ValueError(f"columns={columns!r}: expected 'field:column|field:column'")
        columns = dict(p.split(":", 1) for p in pairs)
    mapping = {str(k).strip(): str(v).strip() for k, v in dict(columns).items()}
    unknown = sorted(set(mapping) - set(FIELDS))
    if unknown:
        raise ValueError(f"columns: unknown field(s) {unknown}; fields: {sorted(FIELDS)}")
    return mapping


def split_paths(ann_path: PathLike | Sequence[PathLike]) -> list[str]:
    """One path, a "+"-joined string of paths, or a list of either -> the list of paths."""
    items = [ann_path] if isinstance(ann_path, (str, os.PathLike)) else list(ann_path)
    return [p for item in items for p in os.fspath(item).split("+") if p]


# --- rows -> records ----------------------------------------------------------------------------


def find_columns(
    rows: Sequence[tuple[str, Any]], mapping: Mapping[str, str], path: str
) -> tuple[dict[str, str], list[str]]:
    """({field: column} present in the file, every column found)."""
    found: dict[str, None] = {}
    for _, row in rows:
        if isinstance(row, Mapping):
            found.update(dict.fromkeys(row))
    columns = list(found)
    chosen = {}
    for field, names in FIELDS.items():
        if mapping.get(field) in found:
            chosen[field] = mapping[field]
            continue
        taken = set(mapping.values()) | set(chosen.values())
        match = next((n for n in names if n in found and n not in taken), None)
        if match is not None:  # also when a mapped column is absent: "+"-joined files differ
            chosen[field] = match
        elif field in mapping:
            raise ParseError(
                f"{path}: column {mapping[field]!r} (columns={field}:{mapping[field]}) "
                f"is not in the file; columns found: {columns}"
            )
    return chosen, columns


def _text_list(value: Any, what: str, *, pipes: bool) -> list[str]:
    """A list of strings from a list, a JSON list string, or (if `pipes`) "a|b|c"."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as error:
                raise EntryError(f"{what}: not a JSON list: {error.msg}") from None
        else:
            value = [p.strip() for p in text.split("|")] if pipes else [text]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise EntryError(f"{what} should be text or a list, got {type(value).__name__}")
    return [str(v) for v in value if v is not None and str(v) != ""]


def _answer_index(answer: Any, choices: list[str]) -> int:
    """The answer as an index into the choices: an int, a digit string, or one choice's text."""
    if isinstance(answer, (list, tuple)) and len(answer) == 1:
        answer = answer[0]
    if isinstance(answer, int) and not isinstance(answer, bool):
        index = answer
    elif isinstance(answer, str) and answer.strip().isdigit() and answer.strip() not in choices:
        index = int(answer.strip())
    else:
        lowered = [c.strip().lower() for c in choices]
        text = str(answer).strip().lower()
        if text not in lowered:
            raise EntryError(f"answer {answer!r} is not one of the choices {choices}")
        index = lowered.index(text)
    if not 0 <= index < len(choices):
        raise EntryError(f"answer index {index} outside the {len(choices)} choices")
    return index


def _turn_pairs(value: Any) -> list[list[str]]:
    """LLaVA-style conversations -> [[human, model], ...] (system turns are left out)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise EntryError(f"conversations: not JSON: {error.msg}") from None
    if not isinstance(value, list):
        raise EntryError("conversations should be a list of turns")
    turns = []
    for turn in value:
        if not isinstance(turn, Mapping):
            raise EntryError("each conversation turn should be an object")
        role = str(turn.get("from", turn.get("role", ""))).lower()
        text = turn.get("value", turn.get("content"))
        if role in ("system",):
            continue
        if role not in HUMAN_ROLES + MODEL_ROLES or not isinstance(text, str):
            raise EntryError(f"turn {turn!r}: expected from/role human|gpt and a text value")
        turns.append((role in HUMAN_ROLES, text.replace("<image>", "").strip()))
    pairs = []
    for i in range(0, len(turns) - 1, 2):
        (human, question), (is_human, answer) = turns[i], turns[i + 1]
        if not human or is_human:
            raise EntryError(f"turn {i}: expected a human turn, then a model turn")
        pairs.append([question, answer])
    if not pairs:
        raise EntryError("conversations hold no human/model turn pair")
    return pairs


class _RowConverter:
    """One file's rows -> records, with the file's columns and image folder."""

    def __init__(self, path: str, base: str, columns: dict[str, str], options: dict[str, Any]):
        self.path, self.base, self.columns = path, base, columns
        self.require_answer = options["require_answer"]
        self.default_instruction = options["default_instruction"]
        self.captions = options["captions"]
        self.stem = os.path.basename(os.path.normpath(path))
        self.prefix = f"{self.stem}:" if options["several"] else ""  # ids unique across files

    def get(self, row: Mapping[str, Any], field: str) -> Any:
        """The row's value of `field` (None when the column is absent or the cell empty)."""
        column = self.columns.get(field)
        value = row.get(column) if column else None
        if value is None and field == "video":  # rows may give a video file or its frames
            value = next((row[n] for n in FIELDS[field] if row.get(n) is not None), None)
        return None if value is None or (isinstance(value, str) and not value.strip()) else value

    def media(self, row: Mapping[str, Any], record: Record) -> None:
        """Puts the row's image (path or bytes) or video into the record; EntryError if none."""
        video, image = self.get(row, "video"), self.get(row, "image")
        if video is not None:
            if isinstance(video, (list, tuple)):
                record["frames"] = [self.resolve(str(v)) for v in video]
            else:
                record["video"] = self.resolve(str(video))
        elif isinstance(image, Mapping):  # Hugging Face Image struct
            if image.get("bytes"):
                record["image_bytes"] = bytes(image["bytes"])
                record["image_path"] = str(image.get("path") or f"{self.stem}:{record['id']}")
            elif image.get("path"):
                record["image"] = self.resolve(str(image["path"]))
            else:
                raise EntryError("image struct has neither bytes nor path")
        elif isinstance(image, str):
            record["image"] = self.resolve(image)
        elif image is None:
            raise EntryError("no image")
        else:
            raise EntryError(f"image should be a path or {{bytes, path}}, got {type(image)}")

    def resolve(self, path: str) -> str:
        """Absolute local path, or a bucket path (gs://...) as it is."""
        if "://" in path or os.path.isabs(path):
            return path
        return os.path.join(self.base, path)

    def __call__(self, where: str, item: tuple[int, Any]) -> list[Record] | Record:
        """One (position, row) -> a record (a list of them for a conversation)."""
        position, row = item
        if not isinstance(row, Mapping):
            raise EntryError(f"expected an object, got {type(row).__name__}")
        identifier = self.get(row, "id")  # else the row's position in its file, from 0
        record: Record = {
            "id": str(identifier) if identifier is not None else f"{self.prefix}{position}"
        }
        try:
            self.media(row, record)
        except EntryError:
            if self.require_answer:  # training/evaluation: an example needs its image
                raise
            # Prediction keeps the row: it is written with its error, never dropped.
        conversations = self.get(row, "conversations")
        if conversations is not None:
            pairs = _turn_pairs(conversations)
            return [
                dict(record, id=f"{record['id']}_{k}", question=q, answers=[a], dialog=pairs[:k])
                for k, (q, a) in enumerate(pairs)
            ]
        question = self.get(row, "question")
        if question is None and self.default_instruction is None:
            raise EntryError("no instruction")
        record["question"] = str(question if question is not None else self.default_instruction)
        choices, answer = self.get(row, "choices"), self.get(row, "answers")
        if choices is not None:
            record["choices"] = _text_list(choices, "choices", pipes=True)
            if answer is not None:
                record["answer_index"] = _answer_index(answer, record["choices"])
                answer = record["choices"][record["answer_index"]]
        if answer is not None:
            record["answers"] = _text_list(answer, "answers", pipes=False)
        if not record.get("answers") and self.require_answer:
            raise EntryError("no answer")
        if self.captions and record.get("answers"):
            record["captions"] = list(record["answers"])
        return record


def _check_columns(path: str, columns: dict[str, str], found: list[str], options: dict) -> None:
    """A file that lacks a column every row needs stops here, naming the columns it has."""

    def missing(field: str, names: Iterable[str]) -> ParseError:
        return ParseError(
            f"{path}: no {field} column (looked for {', '.join(names)}; map yours with "
            f"columns={field}:<name>); columns found: {found}"
        )

    if not ({"image", "video"} & set(columns)):
        raise missing("image", FIELDS["image"] + FIELDS["video"])
    if "conversations" in columns:
        return
    if "question" not in columns and options["default_instruction"] is None:
        raise missing("question", FIELDS["question"])
    if "answers" not in columns and options["require_answer"]:
        raise missing("answers", FIELDS["answers"])


@register("user", several_files=True)
def parse_user(
    ann_path: PathLike | Sequence[PathLike],
    image_root: PathLike,
    report: ParseReport,
    *,
    images: str | None = None,
    columns: Mapping[str, str] | str | None = None,
    split: str | None = None,
    require_answer: bool = True,
    default_instruction: str | None = None,
    captions: bool = False,
) -> list[Record]:
    """Every row of every file in `ann_path` (see the module docstring) -> records, in order.

    `images`: the folder relative image paths are joined to (default: each annotation file's
    own folder; `image_root` is not used). `split`: the split of a DatasetDict folder.
    `require_answer=False` (prediction): rows without an answer, or without a usable image, are
    kept. `default_instruction`: the instruction of rows without one (e.g. a caption prompt).
    """
    del image_root  # relative paths are relative to the annotation file (or `images`)
    mapping = parse_columns(columns)
    options = dict(
        require_answer=require_answer, default_instruction=default_instruction, captions=captions
    )
    paths = split_paths(ann_path)
    records: list[Record] = []
    for path in paths:
        if not os.path.exists(path):
            raise FileNotFoundError(f"annotation file not found: {path}")
        options["several"] = len(paths) > 1
        rows, folder = read_rows(path, report, split=split, images_only=not require_answer)
        if not rows:
            continue
        chosen, found = find_columns(rows, mapping, path)
        if not require_answer and not ({"image", "video"} & set(chosen)):
            chosen["image"] = "image"  # a folder of images gives an "image" column
        _check_columns(path, chosen, found, options)
        convert = _RowConverter(path, images or folder, chosen, options)
        prefix = f"{path}: " if len(paths) > 1 else ""  # messages name the file of several
        items = [(f"{prefix}{where}", (i, row)) for i, (where, row) in enumerate(rows)]
        records.extend(convert_all(items, convert, report))
    return records
