"""Caption datasets: COCO Caption (also NoCaps, Flickr30K, Web CapFilt) and TextCaps.

| format         | file(s)                                                                        |
|----------------|--------------------------------------------------------------------------------|
| coco_caption   | LAVIS `[{"image", "caption": str or list}]`; COCO `{"images", "annotations"}`;  |
|                | Karpathy `{"images": [{"filename", "filepath"?, "sentences", "split"}]}`       |
|                | (option `split`: str or list, e.g. ["train", "restval"]). Also used as        |
|                | `nocaps` (COCO layout), `flickr30k` (Karpathy or LAVIS), `web_capfilt`.       |
| textcaps       | TextCaps_0.1_*.json `{"data": [{"image_id", "caption_str", "image_path"?}]}`  |

One record per image with all its captions under `captions` (the pipeline samples one per step).
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
    indexed,
    join,
    layout_error,
    load_json,
    register,
    str_list,
)


@register("coco_caption", "web_capfilt", "nocaps", "flickr30k")
def parse_captions(
    ann_path: PathLike,
    image_root: PathLike,
    report: ParseReport,
    split: str | Sequence[str] | None = None,
) -> list[Record]:
    """LAVIS list, official COCO/NoCaps, or Karpathy json -> one record per image with all its
    captions (the pipeline samples one per step)."""
    data = load_json(ann_path)
    if isinstance(data, list):
        return _lavis_captions(data, image_root, report)
    if isinstance(data, dict) and isinstance(data.get("images"), list):
        images = data["images"]
        if images and isinstance(images[0], dict) and "sentences" in images[0]:
            return _karpathy_captions(images, image_root, report, as_set(split))
        return _coco_captions(images, data.get("annotations"), image_root, report)
    raise layout_error(ann_path, 'a list of {"image", "caption"} or an object with "images"')


def _lavis_captions(entries: list, image_root: PathLike, report: ParseReport) -> list[Record]:
    by_image: dict[str, Record] = {}

    def convert(where: str, entry: Any) -> list:
        """One `{"image", "caption": str or list}` row; captions gather on their image's record."""
        image = field(entry, "image", str)
        caption = field(entry, "caption", (str, list))
        captions = [caption] if isinstance(caption, str) else str_list(entry, "caption")
        record = by_image.setdefault(
            image,
            {
                "id": str(entry.get("image_id", image)),
                "image": join(image_root, image),
                "captions": [],
            },
        )
        record["captions"].extend(captions)
        return []  # records are collected per image in by_image

    convert_all(indexed(entries), convert, report)
    return list(by_image.values())


def _coco_captions(
    images: list, annotations: list | None, image_root: PathLike, report: ParseReport
) -> list[Record]:
    by_id: dict[Any, Record] = {}

    def add_image(where: str, image: Any) -> list:
        """One COCO `images` entry `{"id", "file_name"}` -> an image record without captions yet."""
        by_id[field(image, "id")] = {
            "id": str(image["id"]),
            "image": join(image_root, field(image, "file_name", str)),
        }
        return []

    def add_caption(where: str, ann: Any) -> list:
        """One COCO `annotations` entry `{"image_id", "caption"}` -> added to its image's record."""
        image_id = field(ann, "image_id")
        if image_id not in by_id:
            raise EntryError(f"image_id {image_id!r} is not in 'images'")
        by_id[image_id].setdefault("captions", []).append(field(ann, "caption", str))
        return []

    convert_all(((f"images #{i}", e) for i, e in enumerate(images)), add_image, report)
    if annotations is not None:
        convert_all(
            ((f"annotations #{i}", e) for i, e in enumerate(annotations)), add_caption, report
        )
    return list(by_id.values())


def _karpathy_captions(
    images: list, image_root: PathLike, report: ParseReport, splits: set | None
) -> list[Record]:
    def convert(where: str, image: Any) -> Record | None:
        """One Karpathy image `{"filename", "filepath"?, "sentences", "split"}` -> a record."""
        if splits is not None and field(image, "split", str) not in splits:
            return None
        filename = field(image, "filename", str)
        relative = os.path.join(image["filepath"], filename) if image.get("filepath") else filename
        captions = [field(s, "raw", str).strip() for s in field(image, "sentences", list)]
        return {
            "id": str(image.get("cocoid", image.get("imgid", filename))),
            "image": join(image_root, relative),
            "captions": captions,
        }

    return convert_all(indexed(images), convert, report)


@register("textcaps")
def parse_textcaps(ann_path: PathLike, image_root: PathLike, report: ParseReport) -> list[Record]:
    """TextCaps: captions grouped per image; the test split has images without captions."""
    data = load_json(ann_path)
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise layout_error(ann_path, 'an object with a "data" list (TextCaps_0.1_*.json)')
    by_image: dict[str, Record] = {}

    def convert(where: str, entry: Any) -> list:
        """One TextCaps row `{"image_id", "caption_str"?, "image_path"?}` -> its image's record."""
        image_id = field(entry, "image_id", str)
        relative = entry.get("image_path") or f"{image_id}.jpg"
        record = by_image.setdefault(
            image_id, {"id": image_id, "image": join(image_root, relative)}
        )
        if "caption_str" in entry:  # absent in the test split
            record.setdefault("captions", []).append(field(entry, "caption_str", str))
        return []

    convert_all(indexed(data["data"]), convert, report)
    return list(by_image.values())
