"""What every annotation parser shares: the report, the errors, field checks and the registry.

A parser is `fn(ann_path, image_root, report, **options) -> list[Record]`. It raises `ParseError`
(or FileNotFoundError) when the file as a whole cannot be used, and converts entry by entry with
`convert_all`, which turns an `EntryError` (or a KeyError/TypeError/ValueError/IndexError from a
broken entry) into a message in the `ParseReport` and goes on with the next entry.

Family modules (captions, vqa, choice, dialog, video) add their parsers with `@register(...)`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from etils import epath

Record = dict[str, Any]
PathLike = str | os.PathLike
MAX_MESSAGES = 20  # messages kept per report; the count goes on past it
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")


class ParseError(ValueError):
    """An annotation file cannot be used (bad JSON, wrong layout, too many broken entries)."""


class EntryError(ValueError):
    """One entry is malformed; collected into the report, the rest of the file goes on."""


@dataclasses.dataclass
class ParseReport:
    """Counts of one parse and the first `MAX_MESSAGES` problems, each naming file and entry."""

    path: str
    num_records: int = 0
    num_skipped: int = 0  # entries left out on purpose (e.g. no image, other split)
    num_errors: int = 0  # malformed entries
    messages: list[str] = dataclasses.field(default_factory=list)

    def add_error(self, where: str, problem: str) -> None:
        """Counts one malformed entry; keeps its message while fewer than MAX_MESSAGES are kept."""
        self.num_errors += 1
        if len(self.messages) < MAX_MESSAGES:
            self.messages.append(f"{self.path}: {where}: {problem}")

    def merge_errors(self, other: ParseReport) -> None:
        """Adds another report's errors (e.g. a second file of the same dataset) to this one."""
        self.num_errors += other.num_errors
        self.messages.extend(other.messages[: MAX_MESSAGES - len(self.messages)])

    def check(self, max_errors: int) -> None:
        """Stop when more than `max_errors` entries were malformed."""
        if self.num_errors > max_errors:
            raise ParseError(
                f"{self.num_errors} malformed entries in {self.path} (allowed: "
                f"{max_errors}); first ones:\n  " + "\n  ".join(self.messages)
            )

    def summary(self) -> str:
        """One line: records, skipped and malformed counts."""
        return (
            f"{self.path}: {self.num_records} records, {self.num_skipped} skipped, "
            f"{self.num_errors} malformed"
        )


# --- the registry -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Parser:
    """A registered parser. `several_files`: it takes a list of annotation files (e.g. VQAv2's
    questions + annotations pair); every other parser gets exactly one path."""

    fn: Callable[..., list[Record]]
    several_files: bool = False


PARSERS: dict[str, Parser] = {}


def register(*format_names: str, several_files: bool = False) -> Callable:
    """Decorator: registers `fn` under each of `format_names` (a format may serve several
    datasets, e.g. `coco_caption` and `nocaps`). Registering a name twice is an error."""

    def add(fn: Callable[..., list[Record]]) -> Callable[..., list[Record]]:
        """Registers `fn` and returns it unchanged."""
        for name in format_names:
            if name in PARSERS:
                raise ValueError(f"annotation format '{name}' registered twice")
            PARSERS[name] = Parser(fn, several_files)
        return fn

    return add


# --- reading files ------------------------------------------------------------------------------


def read_text(path: PathLike) -> str:
    """The whole file as text; FileNotFoundError naming the path if it is not a file."""
    file = epath.Path(os.fspath(path))  # local paths and buckets (gs://) alike
    if not file.is_file():
        raise FileNotFoundError(f"annotation file not found: {os.fspath(path)}")
    return file.read_text(encoding="utf-8")


def load_json(path: PathLike) -> Any:
    """The parsed JSON file; ParseError with line and column when it is not valid JSON."""
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise ParseError(
            f"{os.fspath(path)}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}"
        ) from None


def jsonl_entries(path: PathLike, report: ParseReport) -> list[tuple[str, Any]]:
    """("line N", object) for each non-blank line; a line that is not JSON is a report error."""
    entries = []
    for line_number, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entries.append((f"line {line_number}", json.loads(line)))
        except json.JSONDecodeError as e:
            report.add_error(f"line {line_number}", f"invalid JSON: {e.msg}")
    return entries


def load_rosetta_ocr(path: PathLike) -> dict[str, list[str]]:
    """{image_id: OCR tokens} of a TextVQA_Rosetta_OCR_v0.2_*.json file (`{"data": [{"image_id",
    "ocr_tokens", "ocr_info"}]}`), the OCR that TextVQA and TextCaps share."""
    ocr = load_json(path)
    if not isinstance(ocr, dict) or not isinstance(ocr.get("data"), list):
        raise layout_error(path, 'an object with a "data" list (Rosetta OCR json)')
    return {
        e["image_id"]: [str(t) for t in e["ocr_tokens"]]
        for e in ocr["data"]
        if isinstance(e, dict) and "image_id" in e and isinstance(e.get("ocr_tokens"), list)
    }


def layout_error(path: PathLike, expected: str) -> ParseError:
    """The error for a file whose top level is not what the format ships."""
    return ParseError(f"{os.fspath(path)}: unexpected layout, expected {expected}")


# --- checking entries ---------------------------------------------------------------------------


def field(entry: Any, key: str, kind: type | tuple[type, ...] = object) -> Any:
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


def str_list(entry: Mapping, key: str) -> list[str]:
    """entry[key] checked to be a list of strings."""
    values = field(entry, key, list)
    if not all(isinstance(v, str) for v in values):
        raise EntryError(f"field '{key}' should be a list of strings")
    return values


def join(root: PathLike, relative: str) -> str:
    """`root/relative`, or `relative` alone when root is empty."""
    return os.path.join(os.fspath(root), relative) if os.fspath(root) else relative


def as_set(value: Any) -> set | None:
    """An option given as one value or several (e.g. split="train" or ["train", "restval"])."""
    if value is None:
        return None
    return {value} if isinstance(value, (str, int)) else set(value)


# --- converting entry by entry ------------------------------------------------------------------


def convert_all(
    items: Iterable[tuple[str, Any]], convert: Callable[[str, Any], Any], report: ParseReport
) -> list[Record]:
    """Run `convert(where, entry)` over (where, entry) pairs. It returns a record, a list of
    records, or None (skipped on purpose); EntryError/KeyError/TypeError/ValueError/IndexError
    become report entries naming `where`."""
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


def indexed(entries: Sequence[Any]) -> Iterable[tuple[str, Any]]:
    """("entry #i", entry) pairs of a JSON list, for `convert_all`."""
    return ((f"entry #{i}", e) for i, e in enumerate(entries))


def keyed(entries: Mapping[str, Any]) -> Iterable[tuple[str, Any]]:
    """("key 'k'", (k, v)) pairs of a JSON object, for `convert_all`."""
    return ((f"key '{k}'", (k, v)) for k, v in entries.items())
