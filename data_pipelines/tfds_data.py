"""Canonical records <-> TFDS datasets in array_record files, with no TensorFlow involved.

Written by `python -m data_pipelines.prepare --out=DIR`: one TFDS dataset per registry dataset,
one builder config per split (each prepared, and skipped when done, on its own), in
`DIR/<dataset>/<split>/1.0.0/` (dataset_info.json, features.json, metadata.json and the shards
`<dataset>-<split>.array_record-0000k-of-0000n`), read by any TFDS reader without TensorFlow:
`tfds.data_source("<dataset>/<split>", split="<split>", data_dir=DIR)` or
`tfds.builder_from_directory("DIR/<dataset>/<split>/1.0.0").as_data_source("<split>")`.

Feature spec (`FIELD_FEATURES`; a dataset's spec has the fields any of its records has):

| record field | TFDS feature | in the pipeline's record |
|---|---|---|
| image | `Image()`: the original file's bytes, never re-encoded | `image_bytes` |
| frames | `Sequence(Image())`: each frame file's bytes | `frame_bytes` (list) |
| video | `Tensor((), object)`: the video file's bytes | `video_bytes` |
| id, question, text | `Text()` | str |
| answers, captions, choices, ocr_tokens, answer_options | `Sequence(Text())` | list[str] |
| answer_index, label, gt_index | `Scalar(int64)` | int |
| dialog | `Tensor((None, 2), object)`: [question, answer] rows | list of [q, a] |
| source_paths | `Sequence(Text())`: the media file path(s) it came from, for messages | same |
| absent_fields | `Sequence(Text())`: fields of the spec this record does not have | (dropped) |

The pipeline decodes the embedded bytes as it decodes the files (`preprocess.ExamplePreprocessor`):
a prepared dataset gives its annotation files' pixels; plain TFDS readers decode image and frames.

A config entry reads a TFDS dataset with `tfds=` (docs/CONTRACTS.md): a name (`"demo_vqa/eval"`,
`"my_set:1.0.0"`, looked up in `tfds_data_dir`, default TFDS's) or a directory (the version
directory with dataset_info.json, or the one above it: its newest version); `tfds_split`
(default: the entry's `split`, else "train"). A dataset prepared elsewhere needs features with the
names of the table, or `tfds_fields={record field: feature name}` for those named otherwise (e.g.
`{"answers": "answer", "image": "jpg"}`): a single `Text` for a list field becomes a one-item
list, an undecoded uint8 image tensor is stored as PNG (lossless), `ClassLabel` gives its int, and
records without `id` get their index. Unknown features are ignored; a dataset needs one of image,
frames or video.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from data_pipelines import images

VERSION = "1.0.0"
FILE_FORMAT = "array_record"
MEDIA_FIELDS = ("image", "frames", "video")
# Media fields -> the keys the pipeline decodes (preprocess.ExamplePreprocessor.pixels).
MEDIA_KEYS = {"image": "image_bytes", "frames": "frame_bytes", "video": "video_bytes"}
TEXT_FIELDS = ("id", "question", "text")
TEXT_LIST_FIELDS = ("answers", "captions", "choices", "ocr_tokens", "answer_options")
INT_FIELDS = ("answer_index", "label", "gt_index")
SOURCE_PATHS, ABSENT_FIELDS = "source_paths", "absent_fields"


def _features_table() -> dict[str, Any]:
    features = tfds.features
    table: dict[str, Any] = {
        "image": features.Image,
        "frames": lambda: features.Sequence(features.Image()),
        "video": lambda: features.Tensor(shape=(), dtype=np.object_),
        "dialog": lambda: features.Tensor(shape=(None, 2), dtype=np.object_),
    }
    table.update({f: features.Text for f in TEXT_FIELDS})
    table.update({f: lambda: features.Sequence(features.Text()) for f in TEXT_LIST_FIELDS})
    table.update({f: lambda: features.Scalar(dtype=np.int64) for f in INT_FIELDS})
    return table


FIELD_FEATURES = _features_table()  # record field -> a factory of its TFDS feature


def _empty(field: str) -> Any:
    """The value an absent field takes in the example (listed in `absent_fields` as well)."""
    if field in INT_FIELDS:
        return 0
    if field in ("image", "video"):
        return b""
    if field == "dialog":
        return np.zeros((0, 2), np.object_)
    return [] if field in TEXT_LIST_FIELDS or field == "frames" else ""


def record_fields(records: Iterable[Mapping[str, Any]], dataset: str) -> list[str]:
    """The fields the records have (their dataset's feature spec), in `FIELD_FEATURES` order.
    ValueError naming the dataset and field for a field the spec cannot hold."""
    seen: set[str] = set()
    for record in records:
        seen.update(record)
    seen.discard("dataset")  # the dataset is the TFDS dataset's name
    if {"image_bytes", "image_path"} & seen:  # your own data's embedded image: its `image`
        seen -= {"image_bytes", "image_path"}
        seen.add("image")
    if "video" in seen:  # a `video` that is a frame folder is stored as its frames
        seen.add("frames")
    unknown = sorted(seen - set(FIELD_FEATURES))
    if unknown:
        raise ValueError(
            f"dataset {dataset!r}: record field(s) {unknown} have no TFDS feature; "
            f"known: {sorted(FIELD_FEATURES)} (data_pipelines/tfds_data.py)"
        )
    return [f for f in FIELD_FEATURES if f in seen]


def features_dict(fields: Sequence[str]) -> tfds.features.FeaturesDict:
    """The TFDS feature spec of a dataset whose records have `fields`."""
    spec = {f: FIELD_FEATURES[f]() for f in fields}
    spec[SOURCE_PATHS] = tfds.features.Sequence(tfds.features.Text())
    spec[ABSENT_FIELDS] = tfds.features.Sequence(tfds.features.Text())
    return tfds.features.FeaturesDict(spec)


def _read(path: str, record: Mapping[str, Any] | None = None) -> bytes:
    if record is not None and "image_bytes" in record:  # your own data's embedded image
        return bytes(record["image_bytes"])
    if "://" in path:  # a bucket path (your own data), read through etils.epath
        from etils import epath

        return epath.Path(path).read_bytes()
    with open(path, "rb") as f:
        return f.read()


def _check_image(data: bytes, path: str) -> None:
    """Decode once now, so a corrupt file is caught at preparation, not in every epoch."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise images.BadImageError(f"cannot read image {path!r}: {error}") from error


def _frame_paths(directory: str) -> list[str]:
    """A frame folder's images in the order `images.load_clip_frames` reads them."""
    names = sorted(n for n in os.listdir(directory) if n.lower().endswith(images.IMAGE_SUFFIXES))
    return [os.path.join(directory, n) for n in names]


def to_example(record: Mapping[str, Any], fields: Sequence[str]) -> dict[str, Any]:
    """A canonical record -> its TFDS example (media files read and checked to decode).

    Raises images.BadImageError or OSError naming the file when a medium cannot be read."""
    record = dict(record)
    if "image_bytes" in record:  # embedded (your own data): named by its image_path
        record.setdefault("image", str(record.get("image_path") or record.get("id", "")))
    if isinstance(record.get("video"), str) and os.path.isdir(record["video"]):
        record["frames"] = _frame_paths(record["video"])  # a frame folder is its frames
        if not record["frames"]:
            raise images.BadImageError(f"clip directory {record.pop('video')!r} holds no frames")
        del record["video"]
    example: dict[str, Any] = {SOURCE_PATHS: [], ABSENT_FIELDS: []}
    for field in fields:
        if field not in record:
            example[ABSENT_FIELDS].append(field)
            example[field] = _empty(field)
            continue
        value = record[field]
        if field in ("image", "video"):
            example[SOURCE_PATHS].append(value)
            value = _read(value, record if field == "image" else None)
            if field == "image":
                _check_image(value, record["image"])
            else:
                images.decode_video(io.BytesIO(value), 1, record["video"])
        elif field == "frames":
            example[SOURCE_PATHS].extend(value)
            value = [_read(path) for path in value]
            for data, path in zip(value, record["frames"]):
                _check_image(data, path)
        elif field == "dialog":
            value = np.asarray([[str(q), str(a)] for q, a in value], np.object_).reshape(-1, 2)
        example[field] = value
    return example


class RecordsBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """One split of one dataset: examples (from `to_example`) -> a TFDS dataset in array_record.

    Name `dataset`, builder config `split` holding the one split `split`, examples in the given
    order (shuffling off: record i of the annotation files is record i here). `metadata` lands in
    metadata.json (`info.metadata`), written after the examples (so they may still add to it)."""

    VERSION = tfds.core.Version(VERSION)
    # No code directory (checksums, dummy data): TFDS would look it up through the package
    # `importlib_resources`, which it imports without declaring it for Python >= 3.9.
    code_path = None

    def __init__(
        self,
        *,
        dataset: str,
        split: str,
        fields: Sequence[str],
        data_dir: str,
        examples: Iterable[tuple[int, dict[str, Any]]] = (),
        metadata: Mapping[str, Any] | None = None,
    ):
        self.name = dataset
        self._split, self._fields, self._examples = split, list(fields), examples
        # The same object, so what the caller adds while the examples run is written too.
        self._metadata = (
            metadata
            if isinstance(metadata, tfds.core.MetadataDict)
            else (tfds.core.MetadataDict(metadata or {}))
        )
        config = tfds.core.BuilderConfig(
            name=split, version=VERSION, description=f"the {split!r} split of {dataset!r}"
        )
        super().__init__(data_dir=data_dir, config=config, file_format=FILE_FORMAT)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"{self.name}: canonical records (data_pipelines/tfds_data.py)",
            features=features_dict(self._fields),
            metadata=self._metadata,
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator]:
        del dl_manager
        return {self._split: self._generate_examples()}

    def _generate_examples(self) -> Iterator[tuple[int, dict[str, Any]]] | Any:
        # A Beam transform (prepare's Beam path) is given back as it is: TFDS applies it.
        return self._examples if hasattr(self._examples, "expand") else iter(self._examples)

    # TFDS prints "Downloading and preparing ..." and "... downloaded" to stdout; nothing is
    # downloaded, and `prepare` prints one JSON line per split there instead.
    def _log_download_bytes(self) -> None:
        pass

    def _log_download_done(self) -> None:
        pass


def dataset_dir(data_dir: str, dataset: str, split: str) -> str:
    """Where `prepare` writes one split: DIR/<dataset>/<split>/<VERSION>."""
    return os.path.join(data_dir, dataset, split, VERSION)


# ------------------------------------------------------------------------------------------
# Reading: a config entry's TFDS dataset as canonical records
# ------------------------------------------------------------------------------------------


class _KeepEncodedFrames(tfds.decode.SkipDecoding):
    """SkipDecoding for a `Sequence(Image())` (TFDS's own has no batch form for NumPy)."""

    def decode_batch_example_np(self, serialized_example: Any) -> Any:
        """The frames' encoded bytes, as stored."""
        return serialized_example


def _is_image(feature: Any) -> bool:
    return isinstance(feature, tfds.features.Image)


def _is_frames(feature: Any) -> bool:  # also tfds.features.Video, a Sequence of Image
    return isinstance(feature, tfds.features.Sequence) and _is_image(feature.feature)


def _open_builder(location: str, data_dir: str | None, where: str) -> Any:
    """A TFDS builder from a directory (a version directory, or the one above it) or a name."""
    directory = epath.Path(location)  # a local directory or a bucket (gs://)
    if directory.is_dir():
        if not (directory / "dataset_info.json").exists():
            versions = sorted(
                (v.name for v in directory.iterdir() if (v / "dataset_info.json").is_file()),
                key=lambda v: tfds.core.Version(v) if tfds.core.Version.is_valid(v) else v,
            )
            if not versions:
                raise FileNotFoundError(
                    f"{where}: no TFDS dataset in directory {location!r} (no dataset_info.json "
                    "there or in a version subdirectory; write one with "
                    "`python -m data_pipelines.prepare`)"
                )
            location = os.path.join(location, versions[-1])
        return tfds.builder_from_directory(location)
    try:
        return tfds.builder(location, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as error:
        raise FileNotFoundError(
            f"{where}: TFDS dataset {location!r} not found (in data_dir {data_dir!r}; a "
            f"directory path works too): {str(error).splitlines()[0]}"
        ) from None


class TfdsRecords(Sequence):
    """The canonical records of a config entry's TFDS dataset, with random access.

    Media come as `image_bytes` / `frame_bytes` / `video_bytes` (the encoded bytes, undecoded).
    Picklable: Grain's worker processes re-open the dataset."""

    def __init__(self, entry: Mapping[str, Any]):
        self.name = str(entry["name"])
        self.location = str(entry["tfds"])
        self.data_dir = entry.get("tfds_data_dir")
        self.split = str(entry.get("tfds_split") or entry.get("split") or "train")
        self.where = f"dataset {self.name!r} (tfds={self.location!r}, split {self.split!r})"
        explicit = dict(entry.get("tfds_fields") or {})
        self._open()
        unknown = sorted(set(explicit) - set(FIELD_FEATURES))
        missing = sorted(n for n in explicit.values() if n not in self._features)
        if unknown or missing:
            raise KeyError(
                f"{self.where}: tfds_fields {explicit}: "
                + (f"unknown record field(s) {unknown}; " if unknown else "")
                + (f"no feature(s) {missing}; " if missing else "")
                + f"features: {sorted(self._features)}; record fields: {sorted(FIELD_FEATURES)}"
            )
        fields = {f: f for f in FIELD_FEATURES if f in self._features}
        self.fields = {**fields, **explicit}  # record field -> feature name
        if not set(MEDIA_FIELDS) & set(self.fields):
            raise KeyError(
                f"{self.where}: none of the features {sorted(self._features)} is image, frames "
                "or video; name yours with tfds_fields={'image': <feature>}"
            )

    def _open(self) -> None:
        builder = _open_builder(self.location, self.data_dir, self.where)
        if self.split not in builder.info.splits:
            raise ValueError(
                f"{self.where}: no split {self.split!r}; it has {sorted(builder.info.splits)} "
                "(set tfds_split)"
            )
        self._features = builder.info.features
        decoders = {}
        for key, feature in self._features.items():
            if _is_image(feature):
                decoders[key] = tfds.decode.SkipDecoding()
            elif _is_frames(feature):
                decoders[key] = _KeepEncodedFrames()
        self._source = builder.as_data_source(self.split, decoders=decoders)
        if len(self._source) == 0:
            raise ValueError(f"{self.where}: no examples (empty split)")

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_source", "_features")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._open()

    def __len__(self) -> int:
        """Number of examples in the split."""
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """The canonical record at `index` (media as encoded bytes)."""
        if not -len(self) <= index < len(self):  # IndexError ends iteration (Sequence.__iter__)
            raise IndexError(f"{self.where}: index {index} outside [0, {len(self)})")
        index %= len(self)
        example = self._source[index]
        absent = {_text(a) for a in example.get(ABSENT_FIELDS, ())}
        record: dict[str, Any] = {"dataset": self.name}
        for field, feature_name in self.fields.items():
            if field not in absent:
                record[MEDIA_KEYS.get(field, field)] = _convert(field, example[feature_name])
        record.setdefault("id", str(index))
        if SOURCE_PATHS in example:
            record[SOURCE_PATHS] = [_text(p) for p in example[SOURCE_PATHS]]
        return record


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _png(pixels: np.ndarray) -> bytes:
    """An image tensor a foreign dataset stores decoded, as lossless PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(pixels, np.uint8).squeeze()).save(buffer, format="PNG")
    return buffer.getvalue()


def _convert(field: str, value: Any) -> Any:
    """A decoded TFDS value -> the record field's type (see the module docstring)."""
    if field in ("image", "video"):
        return _png(value) if isinstance(value, np.ndarray) and value.dtype != np.object_ else value
    if field == "frames":
        if isinstance(value, np.ndarray) and value.dtype != np.object_:
            return [_png(frame) for frame in value]
        return list(value)
    if field in INT_FIELDS:
        return int(value)
    if field == "dialog":
        return [[_text(q), _text(a)] for q, a in np.asarray(value).reshape(-1, 2)]
    if field in TEXT_LIST_FIELDS:
        if isinstance(value, (bytes, str)):
            return [_text(value)]
        return [_text(v) for v in value]
    return _text(value)
