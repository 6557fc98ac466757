"""Caption datasets: COCO Caption (also NoCaps, Flickr30K, Web CapFilt) and TextCaps.

| format         | file(s)                                                                        |
|----------------|--------------------------------------------------------------------------------|
| coco_caption   | LAVIS `[{"image", "caption": str or list}]`; COCO `{"images", "annotations"}`;  |
|                | Karpathy `{"images": [{"filename", "filepath"?, "sentences", "split"}]}`       |
|                | (option `split`: str or list, e.g. ["train", "restval"]). Also used as        |
|                | `nocaps` (COCO layout), `flickr30k` (Karpathy or LAVIS).                      |
| web_capfilt    | BLIP's ccs_synthetic_filtered_large.json `[{"url", "caption"}]`; the images   |
|                | are found through img2dataset's `.json` sidecars (`url` -> the image beside)  |
| textcaps       | TextCaps_0.1_*.json `{"data": [{"image_id", "image_name", "caption_str"?}]}`; |
|                | image `<image_root>/<image_name>.jpg`; OCR tokens from option `ocr_path`      |
|                | (TextVQA_Rosetta_OCR_v0.2_*.json: TextCaps' images are TextVQA's)             |

One record per image with all its captions under `captions` (the pipeline samples one per step).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from data_pipelines.formats.common import (
    IMAGE_SUFFIXES,
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
    load_rosetta_ocr,
    register,
    str_list,
)


@register("coco_caption", "nocaps", "flickr30k")
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


@register("web_capfilt")
def parse_web_capfilt(
    ann_path: PathLike, image_root: PathLike, report: ParseReport
) -> list[Record]:
    """Web CapFilt: BLIP's `[{"url", "caption"}]` list, images downloaded by the user.

    The images are found through the `.json` sidecar img2dataset writes next to each one (its
    `url` key); a url whose download failed or was never made has no sidecar and is skipped
    (counted in `num_skipped`: web crawls lose a share of their urls). Rows with an `image` key
    (LAVIS's own layout) are read as the coco_caption format reads them.
    """
    data = load_json(ann_path)
    if not isinstance(data, list):
        raise layout_error(ann_path, 'a list of {"url", "caption"} (ccs_synthetic_filtered_*.json)')
    if data and isinstance(data[0], dict) and "image" in data[0]:
        return _lavis_captions(data, image_root, report)
    by_url = img2dataset_index(image_root)

    def convert(where: str, entry: Any) -> Record | None:
        """One `{"url", "caption"}` row -> a record, or None when its image was not downloaded."""
        url, caption = field(entry, "url", str), field(entry, "caption", str)
        if url not in by_url:
            return None
        return {
            "id": os.path.splitext(os.path.basename(by_url[url]))[0],
            "image": by_url[url],
            "captions": [caption],
        }

    return convert_all(indexed(data), convert, report)


def img2dataset_index(image_root: PathLike) -> dict[str, str]:
    """{url: image path} from the `.json` sidecars of an img2dataset `--output_format files`
    tree (`<shard>/<key>.json` beside `<shard>/<key>.<jpg|png|webp>`); failed downloads
    (`status` other than "success") are left out."""
    by_url: dict[str, str] = {}
    for directory, _, names in sorted(os.walk(os.fspath(image_root))):
        stems = {os.path.splitext(n)[0]: n for n in names if n.lower().endswith(IMAGE_SUFFIXES)}
        for name in sorted(names):
            stem, extension = os.path.splitext(name)
            if extension != ".json" or stem not in stems:
                continue
            try:
                with open(os.path.join(directory, name), encoding="utf-8") as f:
                    meta = json.load(f)
            except (OSError, ValueError):
                continue  # not a sidecar (or a broken one): its image is simply not indexed
            if isinstance(meta, dict) and meta.get("status", "success") == "success":
                if isinstance(meta.get("url"), str):
                    by_url[meta["url"]] = os.path.join(directory, stems[stem])
    return by_url


@register("textcaps")
def parse_textcaps(
    ann_path: PathLike,
    image_root: PathLike,
    report: ParseReport,
    ocr_path: PathLike | None = None,
) -> list[Record]:
    """TextCaps: captions grouped per image (the test split has none); the image is
    `<image_root>/<image_name>.jpg` (train_images/ holds train and val). With `ocr_path` (the
    Rosetta OCR file of TextVQA, whose images TextCaps reuses) records carry `ocr_tokens`."""
    data = load_json(ann_path)
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise layout_error(ann_path, 'an object with a "data" list (TextCaps_0.1_*.json)')
    ocr_by_image = load_rosetta_ocr(ocr_path) if ocr_path is not None else {}
    by_image: dict[str, Record] = {}

    def convert(where: str, entry: Any) -> list:
        """One TextCaps row `{"image_id", "image_name"?, "caption_str"?}` -> its image's record."""
        image_id = field(entry, "image_id", str)
        # image_path ("train/<id>.jpg") names a folder the zip does not have; image_name is the
        # file's stem inside train_images/ (or test_images/).
        name = field(entry, "image_name", str) if "image_name" in entry else image_id
        record = by_image.setdefault(
            image_id, {"id": image_id, "image": join(image_root, f"{name}.jpg")}
        )
        if image_id in ocr_by_image:
            record["ocr_tokens"] = list(ocr_by_image[image_id])
        if "caption_str" in entry:  # absent in the test split
            record.setdefault("captions", []).append(field(entry, "caption_str", str))
        return []

    convert_all(indexed(data["data"]), convert, report)
    return list(by_image.values())
