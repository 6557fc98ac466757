"""The writing side of the miniature: files under one root, and the manifest of what was written.

Dataset modules call `Miniature` to write annotation files (JSON, JSONL, CSV, text), photographs
and video clips at their published relative paths, and `record` what each split holds. The
manifest (`Miniature.manifest`, JSON-serializable) is what `write_miniature` returns:

    {"root": str, "seed": int, "corrupt": bool,
     "datasets": {name: {"held": "in" | "out", "layout_source": str, "derived_from": str | None,
                         "files": [annotation files], "media": {path: {...}},
                         "splits": {split: {"files": [...], "examples": int, "unit": str, ...}}}},
     "corrupted": {name: {"unreadable": [{"path", "split"}],
                          "malformed": [{"file", "split", "where", "problem"}]}}}

Paths are relative to the root. `examples` counts well-formed entries in the published unit
(`unit`: caption, image, question, round, conversation, pair, meme, problem...); extra counts
(images, turns, videos, skipped) sit beside it. Malformed entries written on purpose
(`corrupt=True`) are not in `examples`; they are listed under "corrupted" and counted in the
split's "malformed"; the split's "unreadable" lists its broken media (their entries are in
`examples`: well-formed, pointing at a file that cannot be decoded).
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from data_pipelines.miniature import photos, video

# The datasets that get one unreadable media file and one malformed entry with corrupt=True.
CORRUPTED = ("coco_caption", "vqav2", "scienceqa", "hateful_memes", "msvd_qa")
VIDEO_SIZE = (64, 48)  # width, height (even, for yuv420p)
VIDEO_FRAMES = 12


class Miniature:
    """Writes files under `root` with a seeded RNG, and keeps the manifest."""

    def __init__(self, root: str, seed: int, corrupt: bool, frames: bool) -> None:
        self.root = os.path.abspath(root)
        self.rng = np.random.default_rng(seed)
        self.corrupt, self.frames = corrupt, frames
        self._photo_order = [int(i) for i in self.rng.permutation(len(photos.PHOTOS))]
        self._next_photo = 0
        self._used_ids: set[tuple[str, int]] = set()
        self.manifest: dict[str, Any] = {
            "root": self.root,
            "seed": seed,
            "corrupt": corrupt,
            "datasets": {},
            "corrupted": {},
        }

    # --- paths and ids ----------------------------------------------------------------------

    def path(self, relative: str) -> str:
        """Absolute path of `relative`, its directory created."""
        path = os.path.join(self.root, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return path

    def unique_id(self, namespace: str, low: int, high: int) -> int:
        """A random int in [low, high) not yet handed out in `namespace` (e.g. COCO image ids)."""
        while True:
            value = int(self.rng.integers(low, high))
            if (namespace, value) not in self._used_ids:
                self._used_ids.add((namespace, value))
                return value

    def hex_id(self, length: int = 16) -> str:
        """An OpenImages-style lowercase hex id."""
        return "".join(self.rng.choice(list("0123456789abcdef"), size=length))

    def youtube_id(self) -> str:
        """An 11-character YouTube-style video id."""
        alphabet = list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
        return "".join(self.rng.choice(alphabet, size=11))

    def next_photo(self, with_text: bool = False) -> photos.Photo:
        """The next photograph in this seed's order (cycling); `with_text`: one with written words
        in it (for the scene-text datasets)."""
        while True:
            index = self._photo_order[self._next_photo % len(self._photo_order)]
            self._next_photo += 1
            if photos.PHOTOS[index].ocr or not with_text:
                return photos.PHOTOS[index]

    # --- annotation files -------------------------------------------------------------------

    def write_json(self, relative: str, payload: Any) -> str:
        """Write `payload` as JSON at `relative`; returns `relative`."""
        with open(self.path(relative), "w", encoding="utf-8") as f:
            json.dump(payload, f)
        return relative

    def write_jsonl(self, relative: str, rows: Iterable[Mapping[str, Any] | str]) -> str:
        """One JSON object per line; a `str` row is written verbatim (a broken line on purpose)."""
        with open(self.path(relative), "w", encoding="utf-8") as f:
            for row in rows:
                f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
        return relative

    def write_csv(self, relative: str, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
        """Write a CSV with a header row (the csv module's quoting); returns `relative`."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
        with open(self.path(relative), "w", encoding="utf-8", newline="") as f:
            f.write(buffer.getvalue())
        return relative

    def write_text(self, relative: str, text: str) -> str:
        """Write `text` verbatim at `relative`; returns `relative`."""
        with open(self.path(relative), "w", encoding="utf-8") as f:
            f.write(text)
        return relative

    # --- media ------------------------------------------------------------------------------

    def photo(
        self,
        dataset: str,
        relative: str,
        mode: str = "RGB",
        photo: photos.Photo | None = None,
        size: int | None = None,
    ) -> photos.Photo:
        """Write a photograph at `relative` (JPEG for .jpg/.jpeg, PNG for .png) in `mode`; returns
        the `Photo` so the caller's texts describe what is in it."""
        photo = photo or self.next_photo()
        size = size or int(self.rng.integers(64, 97))
        image = photos.render(photo, mode, size)
        extension = os.path.splitext(relative)[1].lower()
        image_format = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}[extension]
        if image_format == "JPEG" and mode not in ("RGB", "L"):
            raise ValueError(f"{relative}: JPEG holds RGB or L, not {mode}")
        image.save(self.path(relative), format=image_format, **_save_options(image_format))
        self._media(dataset)[relative] = {
            "kind": "image",
            "format": image_format,
            "mode": mode,
            "size": list(image.size),
            "source": photo.file,
        }
        return photo

    def clip(self, dataset: str, relative: str, frame_dir: str | None = None) -> photos.Photo:
        """Write a video clip at `relative` (codec from its extension) panning over a photograph;
        with `frames=True`, also its frames under `frame_dir`. Returns the `Photo` shown."""
        photo = self.next_photo()
        width, height = VIDEO_SIZE
        frames = photos.pan_frames(photo, VIDEO_FRAMES, width, height)
        codec = video.write_video(self.path(relative), frames)
        entry = {"kind": "video", "codec": codec, "frames": len(frames), "source": photo.file}
        if self.frames and frame_dir is not None:
            video.write_frame_dir(os.path.join(self.root, frame_dir), frames)
            entry["frame_dir"] = frame_dir
        self._media(dataset)[relative] = entry
        return photo

    def _media(self, dataset: str) -> dict[str, Any]:
        return self.manifest.setdefault("_media", {}).setdefault(dataset, {})

    # --- corruption -------------------------------------------------------------------------

    def corrupts(self, dataset: str) -> bool:
        """Whether `dataset` gets its unreadable file and malformed entry in this run."""
        return self.corrupt and dataset in CORRUPTED

    def break_media(self, dataset: str, split_name: str, relative: str) -> None:
        """Overwrite a written image/video with a truncated header: the entries of `split_name`
        pointing at it are well-formed, the file cannot be decoded."""
        path = os.path.join(self.root, relative)
        with open(path, "rb") as f:
            head = f.read(48)
        with open(path, "wb") as f:
            f.write(head + b"\x00 truncated by the miniature's corrupt=True \x00")
        self._corrupted(dataset)["unreadable"].append({"path": relative, "split": split_name})

    def malformed(self, dataset: str, split_name: str, file: str, where: str, problem: str) -> None:
        """Note a malformed entry written on purpose into `file` (of split `split_name`)."""
        self._corrupted(dataset)["malformed"].append(
            {"file": file, "split": split_name, "where": where, "problem": problem}
        )

    def _corrupted(self, dataset: str) -> dict[str, list]:
        return self.manifest["corrupted"].setdefault(dataset, {"unreadable": [], "malformed": []})

    # --- the manifest -----------------------------------------------------------------------

    def record(
        self,
        dataset: str,
        held: str,
        layout_source: str,
        splits: Mapping[str, Mapping[str, Any]],
        derived_from: str | None = None,
    ) -> None:
        """Register `dataset`: its splits ({split: {"files", "examples", "unit", ...}}) and the
        media written for it so far (a derived dataset shares its source's media and faults). A
        split's "malformed" count and "unreadable" paths come from `corrupted`."""
        source = derived_from or dataset
        corrupted = self.manifest["corrupted"].get(source, {"unreadable": [], "malformed": []})
        split_entries = {}
        for split_name, entry in splits.items():
            entry = dict(entry)
            entry["malformed"] = sum(m["split"] == split_name for m in corrupted["malformed"])
            entry["unreadable"] = [
                u["path"] for u in corrupted["unreadable"] if u["split"] == split_name
            ]
            split_entries[split_name] = entry
        files = sorted({f for entry in splits.values() for f in entry["files"]})
        self.manifest["datasets"][dataset] = {
            "held": held,
            "layout_source": layout_source,
            "derived_from": derived_from,
            "files": files,
            "media": dict(sorted(self._media(source).items())),
            "splits": split_entries,
        }

    def finish(self) -> dict[str, Any]:
        """The manifest, without the per-dataset media bookkeeping."""
        self.manifest.pop("_media", None)
        return self.manifest


def split(files: str | Sequence[str], examples: int, unit: str, **counts: Any) -> dict[str, Any]:
    """A manifest split entry: its annotation file(s), the example count in `unit`, extras."""
    files = [files] if isinstance(files, str) else list(files)
    return {"files": files, "examples": examples, "unit": unit, **counts}


def _save_options(image_format: str) -> dict[str, Any]:
    return {"quality": 85} if image_format == "JPEG" else {"optimize": False}
