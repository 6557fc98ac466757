"""Captioning datasets in their published layouts: COCO Caption (Karpathy), Web CapFilt, TextCaps,
NoCaps, Flickr30K. One function per dataset; its docstring says where the layout comes from."""

from __future__ import annotations

from data_pipelines.miniature.writer import Miniature, split

COCO_IMAGES = "coco/images"  # LAVIS `coco/images/` with COCO's train2014/ val2014/ ... inside
_KARPATHY_SOURCE = (
    "LAVIS lavis/configs/datasets/coco/defaults_cap.yaml (coco_karpathy_{train,val,test}.json, "
    "images under coco/images/) and BLIP data/coco_karpathy_dataset.py (train rows "
    '{"caption", "image", "image_id"}, val/test {"image", "caption": [...]}, id from the file name)'
)


def coco_image(m: Miniature, dataset: str, subset: str, mode: str = "RGB"):
    """A COCO 2014 image `<subset>/COCO_<subset>_<12-digit id>.jpg` under coco/images/;
    returns (relative path inside coco/images, image id, Photo)."""
    image_id = m.unique_id("coco", 9, 581930)
    relative = f"{subset}/COCO_{subset}_{image_id:012d}.jpg"
    photo = m.photo(dataset, f"{COCO_IMAGES}/{relative}", mode)
    return relative, image_id, photo


def coco_caption(m: Miniature) -> None:
    """COCO Caption, Karpathy split, as LAVIS/BLIP ship it.

    coco/annotations/coco_karpathy_train.json  [{"caption": str, "image": "train2014/COCO_train2014_
        <12 digits>.jpg", "image_id": "coco_<id>"}], one row per caption; Karpathy's train includes
        "restval" images from val2014.
    coco/annotations/coco_karpathy_{val,test}.json  [{"image": "val2014/...", "caption": [5 str]}].
    coco/images/{train2014,val2014}/COCO_<subset>_<12-digit id>.jpg (COCO's own file names; COCO
        has some grayscale JPEGs, so one image here is mode L).
    Verified: the train row keys (a LAVIS-format docstring quoting a row), the eval row keys and
    the id-from-file-name rule (BLIP/LAVIS loaders). Not verified: whether val/test rows carry
    other keys (the loaders read only these two).
    """
    rows, corrupt = [], m.corrupts("coco_caption")
    for index, (subset, mode) in enumerate(
        (("train2014", "RGB"), ("train2014", "L"), ("val2014", "RGB"))
    ):
        relative, image_id, photo = coco_image(m, "coco_caption", subset, mode)
        rows += [
            {"caption": c, "image": relative, "image_id": f"coco_{image_id}"}
            for c in photo.captions[:2]
        ]
        if corrupt and index == 0:
            m.break_media("coco_caption", "train", f"{COCO_IMAGES}/{relative}")
    train = "coco/annotations/coco_karpathy_train.json"
    if corrupt:
        rows.insert(1, {"caption": "A row without its image.", "image_id": "coco_1"})
        m.malformed("coco_caption", "train", train, "entry #1", "missing field 'image'")
    m.write_json(train, rows)
    splits = {"train": split(train, 6, "caption", images=3)}
    for name, count in (("val", 2), ("test", 3)):
        entries = []
        for _ in range(count):
            relative, _, photo = coco_image(m, "coco_caption", "val2014")
            entries.append({"image": relative, "caption": list(photo.captions)})
        path = m.write_json(f"coco/annotations/coco_karpathy_{name}.json", entries)
        splits[name] = split(path, count, "image", captions=5 * count)
    m.record("coco_caption", "in", _KARPATHY_SOURCE, splits)


def web_capfilt(m: Miniature) -> None:
    """Web CapFilt: BLIP's bootstrapped captions of CC3M+CC12M+SBU web images.

    capfilt/ccs_synthetic_filtered_large.json  [{"url": str, "caption": str}] (BLIP README: "Each
        item in the list is a dictionary with two key-value pairs: {'url', 'caption'}"). The json
        has URLs, not files: users download the images themselves.
    capfilt/images/00000/000000000.{jpg,txt,json}, ...  the images as img2dataset writes them with
        --output_format files (shard folder of 5 digits, 9-digit key, caption .txt and a metadata
        .json sidecar holding url, caption, key, status, sizes), from img2dataset's writer.py and
        downloader.py. Which downloader a user runs is their choice; img2dataset is the common one.
    Not reproduced: img2dataset's per-shard .parquet and _stats.json files.
    """
    rows = []
    for key in range(4):
        photo = m.next_photo()
        url = f"https://images.example.org/capfilt/{m.hex_id(12)}.jpg"
        caption = photo.captions[key % 5].lower().rstrip(".")  # BLIP's synthetic style
        rows.append({"url": url, "caption": caption})
        stem = f"capfilt/images/00000/{key:09d}"
        m.photo("web_capfilt", f"{stem}.jpg", "RGB", photo=photo)
        m.write_text(f"{stem}.txt", caption)
        meta = {"url": url, "caption": caption, "key": f"{key:09d}", "status": "success"}
        meta.update({"error_message": None, "width": 0, "height": 0})
        m.write_json(f"{stem}.json", meta)
    path = m.write_json("capfilt/ccs_synthetic_filtered_large.json", rows)
    source = (
        "BLIP README (CapFilt json: list of {url, caption}); img2dataset writer.py (files layout)"
    )
    m.record("web_capfilt", "in", source, {"train": split(path, 4, "caption", images=4)})


def _textcaps_entries(m: Miniature, set_name: str, num_images: int) -> tuple[list, list]:
    entries, ocr = [], []
    for _ in range(num_images):
        image_id = m.hex_id()
        photo = m.photo("textcaps", f"textcaps/train_images/{image_id}.jpg", "RGB")
        common = {
            "image_id": image_id,
            "image_classes": [photo.noun.capitalize()],
            "flickr_original_url": f"https://farm1.staticflickr.com/1/{image_id}_o.jpg",
            "flickr_300k_url": f"https://c1.staticflickr.com/1/{image_id}_z.jpg",
            "image_width": 1024,
            "image_height": 768,
            "set_name": set_name,
            "image_name": image_id,
            "image_path": f"train/{image_id}.jpg",
        }
        references = [c.rstrip(".") for c in photo.captions]
        tokens = [["<s>", *c.lower().split(), "</s>"] for c in references]
        for caption, caption_tokens in zip(references, tokens):
            entries.append(
                {
                    **common,
                    "caption_id": 100000000 + len(entries),
                    "caption_str": caption,
                    "caption_tokens": caption_tokens,
                    "reference_strs": references,
                    "reference_tokens": tokens,
                }
            )
        ocr.append(rosetta_ocr(image_id, photo.ocr or (photo.noun,)))
    return entries, ocr


def rosetta_ocr(image_id: str, words: tuple[str, ...]) -> dict:
    """One entry of TextVQA_Rosetta_OCR_v0.2_*.json: tokens and normalized boxes."""
    boxes = [
        {
            "word": word,
            "bounding_box": {
                "width": 0.2,
                "height": 0.05,
                "rotation": 0,
                "roll": 0,
                "pitch": 0,
                "yaw": 0,
                "top_left_x": round(0.1 + 0.15 * i, 3),
                "top_left_y": 0.3,
            },
        }
        for i, word in enumerate(words)
    ]
    return {"image_id": image_id, "ocr_tokens": list(words), "ocr_info": boxes}


def textcaps(m: Miniature) -> None:
    """TextCaps 0.1 (dl.fbaipublicfiles.com/textvqa/data/textcaps/).

    textcaps/TextCaps_0.1_{train,val}.json  {"dataset_type", "dataset_name": "textcaps",
        "dataset_version": 0.1, "data": [one entry per caption: image_id, image_name, image_path
        "train/<id>.jpg", caption_id, caption_str, caption_tokens, reference_strs (the image's 5
        captions), reference_tokens, image_classes, flickr urls, image_width/height, set_name]}.
    textcaps/train_images/<image_id>.jpg  train_val_images.zip (train and val images both).
    textcaps/TextVQA_Rosetta_OCR_v0.2_{train,val}.json  {"data": [{"image_id", "ocr_tokens",
        "ocr_info": [{"word", "bounding_box"}]}]}: TextCaps ships no OCR of its own; its images
        are TextVQA's, and the Rosetta OCR files cover them.
    Verified: big_vision datasets/textcaps/textcaps.py (file names, train_images/ for train and
    val, image_name + ".jpg"), a public test fixture mirroring the entry keys and the Rosetta OCR
    keys. Not verified: other top-level keys of the Rosetta OCR file (only "data" is written).
    """
    splits = {}
    for name, num_images in (("train", 2), ("val", 3)):
        entries, ocr = _textcaps_entries(m, name, num_images)
        header = {"dataset_type": name, "dataset_name": "textcaps", "dataset_version": 0.1}
        path = m.write_json(f"textcaps/TextCaps_0.1_{name}.json", {**header, "data": entries})
        ocr_path = m.write_json(f"textcaps/TextVQA_Rosetta_OCR_v0.2_{name}.json", {"data": ocr})
        if name == "train":
            splits[name] = split([path, ocr_path], len(entries), "caption", images=num_images)
        else:
            splits[name] = split([path, ocr_path], num_images, "image", captions=len(entries))
    source = (
        "big_vision datasets/textcaps/textcaps.py; TextCaps/Rosetta OCR entry keys (test fixture)"
    )
    m.record("textcaps", "in", source, splits)


def nocaps(m: Miniature) -> None:
    """NoCaps validation, COCO caption format (nocaps.s3.amazonaws.com/nocaps_val_4500_captions.json).

    nocaps/nocaps_val_4500_captions.json  {"licenses", "info", "images": [{"id", "open_images_id",
        "height", "width", "coco_url", "file_name": "<open images id>.jpg", "license",
        "date_captured"}], "annotations": [{"image_id", "id", "caption"}]}.
    nocaps/validation/<open images id>.jpg  the Open Images validation images (the tarball
        extracts a validation/ folder).
    Verified: big_vision datasets/nocaps/nocaps.py (file name, images/annotations keys it reads:
    id, file_name, coco_url, image_id, caption). Not verified: the image entries' other keys
    (a "domain" field may exist); the real file has 10 captions per image, the miniature 5.
    """
    images, annotations = [], []
    for index in range(3):
        open_images_id = m.hex_id()
        photo = m.photo("nocaps", f"nocaps/validation/{open_images_id}.jpg", "RGB")
        images.append(
            {
                "id": index,
                "open_images_id": open_images_id,
                "height": 768,
                "width": 1024,
                "coco_url": f"https://s3.amazonaws.com/nocaps/val/{open_images_id}.jpg",
                "file_name": f"{open_images_id}.jpg",
                "license": 0,
                "date_captured": "2018-11-06 11:04:33",
            }
        )
        for caption in photo.captions:
            annotations.append({"image_id": index, "id": len(annotations), "caption": caption})
    payload = {"licenses": [], "info": {"description": "nocaps val"}, "images": images}
    path = m.write_json(
        "nocaps/nocaps_val_4500_captions.json", {**payload, "annotations": annotations}
    )
    source = "big_vision datasets/nocaps/nocaps.py (file names and the COCO keys it reads)"
    m.record("nocaps", "out", source, {"val": split(path, 3, "image", captions=15)})


def flickr30k(m: Miniature) -> None:
    """Flickr30K, Karpathy's split file (cs.stanford.edu/people/karpathy/deepimagesent/).

    flickr30k/dataset_flickr30k.json  {"images": [{"sentids", "imgid", "sentences": [{"tokens",
        "raw", "imgid", "sentid"}], "split": "train"|"val"|"test", "filename": "<id>.jpg"}],
        "dataset": "flickr30k"}.
    flickr30k/flickr30k-images/<id>.jpg  the official image archive's folder.
    The alternative is LAVIS's flickr30k_{train,val,test}.json (train rows {"image":
    "flickr30k-images/<id>.jpg", "caption", "image_id"}, test rows {"image", "caption": [...]});
    the repo's parsers read both, Karpathy is written here. Verified: the Karpathy keys (a public
    README describing the three Karpathy files). Not verified: the archive's folder name.
    """
    images = []
    for name, count in (("train", 2), ("test", 3)):
        for _ in range(count):
            filename = f"{m.unique_id('flickr', 1000092795, 9999999999)}.jpg"
            photo = m.photo("flickr30k", f"flickr30k/flickr30k-images/{filename}", "RGB")
            imgid = len(images)
            sentences = [
                {
                    "tokens": c.lower().rstrip(".").split(),
                    "raw": c,
                    "imgid": imgid,
                    "sentid": 5 * imgid + k,
                }
                for k, c in enumerate(photo.captions)
            ]
            images.append(
                {
                    "sentids": [s["sentid"] for s in sentences],
                    "imgid": imgid,
                    "sentences": sentences,
                    "split": name,
                    "filename": filename,
                }
            )
    path = m.write_json(
        "flickr30k/dataset_flickr30k.json", {"images": images, "dataset": "flickr30k"}
    )
    source = (
        "Karpathy's dataset_flickr30k.json (keys as described by public READMEs); LAVIS alternative"
    )
    m.record(
        "flickr30k",
        "out",
        source,
        {
            "train": split(path, 10, "caption", images=2),
            "test": split(path, 3, "image", captions=15),
        },
    )
