"""One example: a canonical record -> the fixed-shape arrays of the batch contract.

`ExamplePreprocessor` fills an instruction template, decodes and resizes the image (or samples a
clip's frames) and tokenizes instruction and target to the padded lengths of the data config.
The batch keys are `ib_jax.contract.batch.TRAIN_KEYS` / `MODEL_INPUTS` (docs/CONTRACTS.md).

`DATA_DEFAULTS` (ib_jax/contract/config.py) is the one table of optional data-config keys and their
defaults; read a key with `setting(data_config, key)`. The keys without a default (`DATA_REQUIRED`:
image_size, the three max lengths, qformer_vocab, lm_spm, global_batch_size) must be in every
data config.

A bad example never raises here: the preprocessor returns a marker `{BAD_KEY: reason,
DATASET_KEY: name}` naming the file and the reason, which the training pipeline's guard counts.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import grain
import numpy as np
from PIL import Image

from data_pipelines import images, templates, text
from data_pipelines.specs import DatasetSpec
from ib_jax.contract.config import DATA_DEFAULTS
from ib_jax.contract.text import text_format

BAD_KEY = "_bad"  # marker element: {"_bad": reason, "_dataset": name}
DATASET_KEY = "_dataset"  # name of the dataset an element came from (stripped before batching)


class BadDataError(RuntimeError):
    """Too many bad examples: the data, not the code, needs fixing."""


def setting(data_config: Mapping[str, Any], key: str) -> Any:
    """`data_config[key]`, or its `DATA_DEFAULTS` value when absent or None."""
    if key not in DATA_DEFAULTS:
        raise KeyError(
            f"'{key}' has no default; optional data-config keys: {sorted(DATA_DEFAULTS)}"
        )
    default = DATA_DEFAULTS[key]
    if hasattr(data_config, "get"):
        value = data_config.get(key, default)
    else:
        value = getattr(data_config, key, default)
    return default if value is None else value


def data_section(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The data config of a run config (its `data`), or the config itself when it is one: the
    data tools take the same `--config` as training, and a data-only config still works."""
    return config["data"] if "data" in config else config


def local_batch_size(global_batch_size: int, process_count: int) -> int:
    """Examples per process: every process feeds its own devices an equal share."""
    if global_batch_size % process_count:
        raise ValueError(
            f"global_batch_size={global_batch_size} is not divisible by "
            f"process_count={process_count}"
        )
    return global_batch_size // process_count


def multiprocessing_options(
    data_config: Mapping[str, Any],
) -> grain.MultiprocessingOptions | None:
    """Grain worker options from `worker_count` / `worker_buffer_size`; None for no workers."""
    workers = int(setting(data_config, "worker_count"))
    if workers <= 0:
        return None
    # Grain's worker processes read absl flags; outside `app.run` (tests, notebooks) they are
    # unparsed and every access raises. Defaults are what we want there.
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    return grain.MultiprocessingOptions(
        num_workers=workers,
        per_worker_buffer_size=int(setting(data_config, "worker_buffer_size")),
    )


class ExamplePreprocessor:
    """record (+ its index in the stream) -> dict of fixed-shape numpy arrays, or a bad marker.

    Arrays (one example; the batch adds the leading B): pixel_values [H, W, 3] float32, or
    [F, H, W, 3] for a clip; qformer_input_ids / qformer_attention_mask [Lq] int32; input_ids /
    attention_mask [Li] int32; labels [Lt] int32 with -100 on padding (training only).
    Picklable: the tokenizers are (re)built lazily in whichever process runs it.
    """

    def __init__(
        self,
        data_config: Mapping[str, Any],
        spec: DatasetSpec,
        *,
        train: bool,
        keep_text: bool = False,
    ):
        # keep_text: also return "_instruction" / "_target" / "_id" strings (data preview).
        self.keep_text = keep_text
        self.name = spec.name
        self.spec = spec
        self.train = train
        self.seed = int(setting(data_config, "seed"))
        self.image_size = int(data_config["image_size"])
        self.num_frames = int(setting(data_config, "num_frames"))
        self.augment = bool(setting(data_config, "augment")) and train
        self.qformer_max_len = int(data_config["qformer_max_len"])
        self.text_max_len = int(data_config["text_max_len"])
        self.target_max_len = int(data_config["target_max_len"])
        self.qformer_vocab = str(data_config["qformer_vocab"])
        self.lm_spm = str(data_config["lm_spm"])
        self.lm_format = text_format(setting(data_config, "lm_type"))
        self._tokenizers = None

    def __getstate__(self):
        # Tokenizers wrap native objects; each worker process builds its own.
        state = dict(self.__dict__)
        state["_tokenizers"] = None
        return state

    @property
    def tokenizers(self) -> tuple[text.QFormerTokenizer, text.LMTokenizer]:
        """(Q-Former WordPiece tokenizer, LM SentencePiece tokenizer), built on first use."""
        if self._tokenizers is None:
            self._tokenizers = (
                text.QFormerTokenizer(self.qformer_vocab),
                text.LMTokenizer(self.lm_spm, self.lm_format),
            )
        return self._tokenizers

    def is_video(self, record: Mapping[str, Any]) -> bool:
        """Whether the record is a clip (a video dataset, or a record with a video or frames)."""
        return self.spec.is_video or any(
            key in record for key in ("video", "frames", "frame_bytes", "video_bytes")
        )

    def pixels(self, record: Mapping[str, Any], rng: np.random.Generator | None) -> np.ndarray:
        """[H, W, 3] for an image, [F, H, W, 3] for a clip. Raises images.BadImageError."""
        if self.is_video(record):
            if "frame_bytes" in record:
                frames = [_open_bytes(b, record) for b in record["frame_bytes"]]
                frames = [
                    frames[i] for i in images.uniform_frame_indices(len(frames), self.num_frames)
                ]
            elif "video_bytes" in record:  # a prepared record: the original video file
                frames = images.decode_video(
                    io.BytesIO(record["video_bytes"]), self.num_frames, _where(record)
                )
            else:
                source = record.get("video") or record.get("frames") or record.get("image")
                frames = images.load_clip_frames(source, self.num_frames)
            return images.preprocess_clip(frames, self.image_size, rng)
        if "image_bytes" in record:
            image = _open_bytes(record["image_bytes"], record)
        elif "image" in record:
            image = images.load_image(record["image"])
        else:
            raise images.BadImageError(f"record {record.get('id', '?')!r} has no image")
        return images.preprocess_image(image, self.image_size, rng)

    def tokenize(self, instruction: str, target: str | None) -> dict[str, np.ndarray]:
        """Token ids and masks, padded to the config's lengths: qformer_* [Lq], input_ids /
        attention_mask [Li], and labels [Lt] (-100 on padding) when a target is given."""
        qformer, lm = self.tokenizers
        # InstructBLIP gives the instruction to the Q-Former as well as to the LM, so the query
        # tokens extract instruction-aware visual features; each side has its own tokenizer.
        q_ids, q_mask = qformer.encode([instruction], self.qformer_max_len)
        input_ids, attention_mask = lm.encode_instruction(instruction, self.text_max_len)
        out = {
            "qformer_input_ids": q_ids[0],
            "qformer_attention_mask": q_mask[0],
            "input_ids": input_ids,
            "attention_mask": attention_mask,
        }
        if target is not None:
            out["labels"] = lm.encode_target(target, self.target_max_len)
        return out

    def __call__(self, index: int, record: Mapping[str, Any]) -> dict[str, Any]:
        """Training: a seeded template, the target, the image; a bad marker instead of raising."""
        where = _where(record)
        try:
            # Seeded by (seed, dataset, index in the stream): the same example gets the same
            # template and crop whichever worker runs it, so runs and resumes are reproducible.
            rng = templates.example_rng(self.seed, self.name, index)
            instruction, target = templates.make_instruction(
                record,
                self.spec.task_category,
                short_answer=self.spec.short_answer,
                ocr=self.spec.ocr,
                rng=rng,
            )
            example = {"pixel_values": self.pixels(record, rng if self.augment else None)}
        except images.BadImageError as error:
            return {BAD_KEY: str(error), DATASET_KEY: self.name}
        except (KeyError, ValueError, TypeError, IndexError) as error:
            return {
                BAD_KEY: f"malformed record {where}: {type(error).__name__}: {error}",
                DATASET_KEY: self.name,
            }
        example.update(self.tokenize(instruction, target))
        example[DATASET_KEY] = self.name
        if self.keep_text:
            example.update(_instruction=instruction, _target=target, _id=str(record.get("id", "")))
        return example


def _open_bytes(data: bytes, record: Mapping[str, Any]) -> Image.Image:
    """Decodes image bytes embedded by `data_pipelines.prepare` (the original encoded file)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return images.to_rgb(image)
    except (OSError, ValueError, SyntaxError) as error:
        raise images.BadImageError(f"cannot decode image {_where(record)}: {error}") from error


def _where(record: Mapping[str, Any]) -> str:
    """dataset/id (path) of a record, for messages."""
    paths = (
        record.get("source_paths")
        or record.get("frames")
        or [record.get("video") or record.get("image", "?")]
    )
    return f"{record.get('dataset', '?')}/{record.get('id', '?')} ({paths[0] if len(paths) == 1 else paths})"
