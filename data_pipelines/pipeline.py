"""The Grain input pipelines: training mixture and per-dataset evaluation.

Training, per process (docs/CONTRACTS.md for the batch):

  records (sources) -> [process_index::process_count] -> shuffle(seed, reshuffled every epoch)
    -> repeat -> map_with_index(template + decode + resize + tokenize)   } per dataset, in the
    -> mix(weights ~ sqrt(size) x multiplier)                            } worker processes
    -> mp_prefetch(worker_count)
    -> skip + count bad examples (stop past max_bad_fraction) -> batch(drop_remainder) -> prefetch

Everything is a function of (seed, process_index, process_count, worker_count), so a run is
reproducible, and the iterator's `get_state()/set_state()` resumes at exactly the next batch.
A bad example (unreadable/missing/truncated image, malformed record) never raises inside a worker:
the worker returns a marker naming the file and the reason, and the main process counts, logs and
drops it, stopping with an error once the fraction of bad examples passes `max_bad_fraction`.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import grain
import numpy as np
from PIL import Image

from data_pipelines import images, mixing, registry, sources, templates, text
from ib_jax.batch import TRAIN_KEYS

logger = logging.getLogger(__name__)

BATCH_KEYS = TRAIN_KEYS  # a training batch holds exactly these
BAD_KEY = "_bad"  # marker element: {"_bad": reason, "_dataset": name}
DATASET_KEY = "_dataset"  # name of the dataset an element came from (stripped before batching)
META_FIELDS = (
    "id",
    "question",
    "answers",
    "captions",
    "choices",
    "answer_index",
    "label",
    "ocr_tokens",
    "text",
    "gt_index",
    "answer_options",
    "dialog",
)


class BadDataError(RuntimeError):
    """Too many bad examples: the data, not the code, needs fixing."""


def _get(config: Mapping[str, Any], key: str, default: Any = None) -> Any:
    value = config.get(key, default) if hasattr(config, "get") else getattr(config, key, default)
    return default if value is None else value


# ------------------------------------------------------------------------------------------
# One example: record -> arrays
# ------------------------------------------------------------------------------------------


class ExamplePreprocessor:
    """record (+ its index in the stream) -> dict of fixed-shape numpy arrays, or a bad marker.

    Picklable: the tokenizers are (re)built lazily in whichever process runs it.
    """

    def __init__(
        self,
        data_config: Mapping[str, Any],
        spec: registry.DatasetSpec,
        *,
        train: bool,
        keep_text: bool = False,
    ):
        self.keep_text = (
            keep_text  # also return "_instruction" / "_target" / "_id" strings (inspect)
        )
        self.name = spec.name
        self.spec = spec
        self.train = train
        self.seed = int(_get(data_config, "seed", 0))
        self.image_size = int(data_config["image_size"])
        self.num_frames = int(_get(data_config, "num_frames", 4))
        self.augment = bool(_get(data_config, "augment", False)) and train
        self.qformer_max_len = int(data_config["qformer_max_len"])
        self.text_max_len = int(data_config["text_max_len"])
        self.target_max_len = int(data_config["target_max_len"])
        self.qformer_vocab = str(data_config["qformer_vocab"])
        self.lm_spm = str(data_config["lm_spm"])
        self._tokenizers = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_tokenizers"] = None
        return state

    @property
    def tokenizers(self) -> tuple[text.QFormerTokenizer, text.LMTokenizer]:
        if self._tokenizers is None:
            self._tokenizers = (
                text.QFormerTokenizer(self.qformer_vocab),
                text.LMTokenizer(self.lm_spm),
            )
        return self._tokenizers

    def is_video(self, record: Mapping[str, Any]) -> bool:
        return self.spec.is_video or "frames" in record or "frame_bytes" in record

    def pixels(self, record: Mapping[str, Any], rng: np.random.Generator | None) -> np.ndarray:
        """[H, W, 3] for an image, [F, H, W, 3] for a clip. Raises images.BadImageError."""
        if self.is_video(record):
            if "frame_bytes" in record:
                frames = [_open_bytes(b, record) for b in record["frame_bytes"]]
                frames = [
                    frames[i] for i in images.uniform_frame_indices(len(frames), self.num_frames)
                ]
            else:
                frames = images.load_clip_frames(
                    record.get("frames", record.get("image")), self.num_frames
                )
            return images.preprocess_clip(frames, self.image_size, rng)
        if "image_bytes" in record:
            image = _open_bytes(record["image_bytes"], record)
        elif "image" in record:
            image = images.load_image(record["image"])
        else:
            raise images.BadImageError(f"record {record.get('id', '?')!r} has no image")
        return images.preprocess_image(image, self.image_size, rng)

    def tokenize(self, instruction: str, target: str | None) -> dict[str, np.ndarray]:
        qformer, lm = self.tokenizers
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
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return images.to_rgb(image)
    except (OSError, ValueError, SyntaxError) as error:
        raise images.BadImageError(f"cannot decode image {_where(record)}: {error}") from error


def _where(record: Mapping[str, Any]) -> str:
    paths = record.get("source_paths") or record.get("frames") or [record.get("image", "?")]
    return f"{record.get('dataset', '?')}/{record.get('id', '?')} ({paths[0] if len(paths) == 1 else paths})"


# ------------------------------------------------------------------------------------------
# Bad-example guard (main process): count, log, drop, stop past the bound
# ------------------------------------------------------------------------------------------


class _GuardIterator(grain.DatasetIterator):
    def __init__(self, parent: grain.DatasetIterator, max_bad_fraction: float, min_examples: int):
        super().__init__(parent)
        self._max_bad_fraction = max_bad_fraction
        self._min_examples = min_examples
        self._seen = 0
        self._bad = 0
        self._per_dataset: dict[str, int] = {}

    def __next__(self) -> dict[str, Any]:
        while True:
            element = next(self._parent)
            self._seen += 1
            name = element.pop(DATASET_KEY, "?")
            if BAD_KEY not in element:
                self._per_dataset[name] = self._per_dataset.get(name, 0) + 1
                return element
            self._bad += 1
            logger.warning(
                "skipped bad example (%d of %d so far): %s", self._bad, self._seen, element[BAD_KEY]
            )
            if self._bad > self._max_bad_fraction * max(self._seen, self._min_examples):
                raise BadDataError(
                    f"{self._bad} of {self._seen} examples were bad, more than max_bad_fraction="
                    f"{self._max_bad_fraction}; last: {element[BAD_KEY]}"
                )

    def get_state(self) -> dict[str, Any]:
        return {
            "parent": self._parent.get_state(),
            "seen": self._seen,
            "bad": self._bad,
            "per_dataset": dict(self._per_dataset),
        }

    def set_state(self, state: Mapping[str, Any]) -> None:
        self._parent.set_state(state["parent"])
        self._seen, self._bad = int(state["seen"]), int(state["bad"])
        self._per_dataset = dict(state["per_dataset"])

    @property
    def counts(self) -> dict[str, Any]:
        """{"seen", "bad", "per_dataset": {name: good examples}} since the start of the run."""
        return {"seen": self._seen, "bad": self._bad, "per_dataset": dict(self._per_dataset)}


class BadExampleGuard(grain.IterDataset):
    """Drops bad-example markers, counting and logging them; raises BadDataError past the bound."""

    def __init__(self, parent: grain.IterDataset, max_bad_fraction: float, min_examples: int = 100):
        super().__init__(parent)
        self._max_bad_fraction = max_bad_fraction
        self._min_examples = min_examples

    def __iter__(self) -> _GuardIterator:
        return _GuardIterator(self._parent.__iter__(), self._max_bad_fraction, self._min_examples)


def find_guard(iterator: grain.DatasetIterator) -> _GuardIterator | None:
    """The bad-example guard inside a training iterator (for its `counts`)."""
    stack = [iterator]
    while stack:
        current = stack.pop()
        if isinstance(current, _GuardIterator):
            return current
        stack.extend(getattr(current, "_parents", ()))
    return None


# ------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------


def _multiprocessing(data_config: Mapping[str, Any]) -> grain.MultiprocessingOptions | None:
    workers = int(_get(data_config, "worker_count", 0))
    if workers <= 0:
        return None
    # Grain's worker processes read absl flags; outside `app.run` (tests, notebooks) they are
    # unparsed and every access raises. Defaults are what we want there.
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    return grain.MultiprocessingOptions(
        num_workers=workers, per_worker_buffer_size=int(_get(data_config, "worker_buffer_size", 8))
    )


def _local_batch_size(global_batch_size: int, process_count: int) -> int:
    if global_batch_size % process_count:
        raise ValueError(
            f"global_batch_size={global_batch_size} is not divisible by "
            f"process_count={process_count}"
        )
    return global_batch_size // process_count


def _shard(
    records: Sequence[Any], name: str, process_index: int, process_count: int
) -> grain.MapDataset:
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} not in [0, {process_count})")
    dataset = grain.MapDataset.source(records)
    if len(dataset) < process_count:
        raise ValueError(
            f"dataset {name!r} has {len(dataset)} examples, fewer than {process_count} processes"
        )
    return dataset[process_index::process_count]


def build_train_examples(
    data_config: Mapping[str, Any],
    *,
    process_index: int = 0,
    process_count: int = 1,
    keep_text: bool = False,
) -> tuple[grain.IterDataset, dict[str, float]]:
    """The unbatched training stream (before the bad-example guard) and the mixture weights.

    Each element is one example dict (+ `_dataset`), or a bad marker."""
    entries = list(_get(data_config, "datasets", []))
    if not entries:
        raise ValueError("data config has no training datasets ('datasets' is empty)")
    seed = int(_get(data_config, "seed", 0))
    streams, sizes, multipliers, video = {}, {}, {}, {}
    for position, entry in enumerate(entries):
        name = sources.entry_name(entry)
        if name in streams:
            raise ValueError(f"dataset {name!r} appears twice in the data config")
        spec = sources.resolve_spec(entry)
        records = sources.load_records(entry, float(_get(data_config, "max_bad_fraction", 0.01)))
        sizes[name] = len(records)
        multipliers[name] = float(_get(entry, "multiplier", 1.0))
        video[name] = spec.is_video
        if multipliers[name] == 0:
            logger.info("dataset %s has multiplier 0: left out of the mixture", name)
            continue
        stream = (
            _shard(records, name, process_index, process_count)
            .shuffle(seed=seed * 1009 + position)  # reshuffled every epoch by grain
            .repeat()
            .map_with_index(ExamplePreprocessor(data_config, spec, train=True, keep_text=keep_text))
        )
        streams[name] = stream.to_iter_dataset()
    if len(set(video[n] for n in streams)) > 1:
        raise ValueError(f"cannot mix image and video datasets in one batch: video={video}")
    weights = mixing.mixture_weights(
        {n: sizes[n] for n in streams}, {n: multipliers[n] for n in streams}
    )
    for name in streams:
        logger.info(
            "dataset %s: %d examples, mixture weight %.4f", name, sizes[name], weights[name]
        )
    return mixing.mix(streams, weights), weights


def build_train_dataset(
    data_config: Mapping[str, Any], *, process_index: int, process_count: int
) -> grain.IterDataset:
    """Per-process training batches, endless.

    Yields dicts with the CONTRACTS.md keys, leading dim `global_batch_size // process_count`
    (pixel_values [B, H, W, 3], ids/masks [B, L] int32, labels [B, Lo] int32 with -100 at pads).
    `iter(ds)` supports `get_state()` / `set_state()`; restore into a fresh iterator of a pipeline
    built from the same config to continue with exactly the next batch.
    """
    batch_size = _local_batch_size(int(data_config["global_batch_size"]), process_count)
    examples, _ = build_train_examples(
        data_config, process_index=process_index, process_count=process_count
    )
    options = _multiprocessing(data_config)
    if options is not None:
        examples = examples.mp_prefetch(options)
    guarded = BadExampleGuard(
        examples,
        float(_get(data_config, "max_bad_fraction", 0.01)),
        int(_get(data_config, "bad_fraction_min_examples", 100)),
    )
    batches = guarded.batch(batch_size, drop_remainder=True)
    prefetch = int(_get(data_config, "prefetch_batches", 2))
    if prefetch > 0:
        batches = grain.experimental.ThreadPrefetchIterDataset(
            batches, prefetch_buffer_size=prefetch
        )
    return batches


# ------------------------------------------------------------------------------------------
# Evaluation
# ------------------------------------------------------------------------------------------


def eval_instruction(spec: registry.DatasetSpec, record: Mapping[str, Any]) -> str:
    """The dataset's zero-shot prompt (registry) filled from the record; slots in prompt order."""
    prompt = spec.eval_prompt
    slots = prompt.count("{}")
    question = record.get("question", "")
    options = ", ".join(record.get("choices", []))
    if spec.task_category == "image_question_generation":
        answers = record.get("answers") or [
            record.get("choices", [""])[record.get("answer_index", 0)]
        ]
        args = [answers[0]]
    elif spec.task_category == "image_classification":
        args = [record.get("text", "")]
    elif spec.task_category == "visual_conversational_qa":
        args = [" ".join(f"{q} {a}." for q, a in record.get("dialog", [])), question]
    elif spec.ocr:
        args = [" ".join(record.get("ocr_tokens", [])), question]
    elif slots == 3:
        args = [record.get("text", ""), question, options]
    elif slots == 2:
        args = [question, options]
    else:
        args = [question or record.get("text", "")]
    if slots == 0:
        return prompt
    if len(args) != slots:
        raise ValueError(
            f"dataset {spec.name!r}: eval prompt {prompt!r} has {slots} slots; "
            f"record {record.get('id', '?')!r} fills {len(args)}"
        )
    return prompt.format(*args)


class _EvalExample:
    """Index -> (arrays, meta). Padding indices (>= the shard's size) repeat a real example with
    valid=0. Bad images become zeros with meta["error"], kept in the denominator (valid=1)."""

    def __init__(self, data_config, spec, records: grain.MapDataset, pad_record: Mapping[str, Any]):
        self.pre = ExamplePreprocessor(data_config, spec, train=False)
        self.spec = spec
        self.records = records
        self.pad_record = pad_record  # a real record, so padding rows have well-formed arrays

    def __call__(self, index: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        valid = index < len(self.records)
        record = self.records[index] if valid else self.pad_record
        meta = {k: record[k] for k in META_FIELDS if k in record}
        meta["dataset"] = self.spec.name
        try:
            pixels = self.pre.pixels(record, None)
        except images.BadImageError as error:
            shape = ((self.pre.num_frames,) if self.pre.is_video(record) else ()) + (
                self.pre.image_size,
                self.pre.image_size,
                3,
            )
            pixels, meta["error"] = np.zeros(shape, np.float32), str(error)
        instruction = eval_instruction(self.spec, record)
        meta["instruction"] = instruction
        arrays = {
            "pixel_values": pixels,
            **self.pre.tokenize(instruction, None),
            "valid": np.int32(valid),
        }
        return arrays, meta


def _eval_batch(elements: Sequence[tuple[dict, dict]]) -> dict[str, Any]:
    """Stacks the arrays; meta becomes a dict of per-example lists (host side, not for jit)."""
    batch = {k: np.stack([a[k] for a, _ in elements]) for k in elements[0][0]}
    keys = sorted({k for _, m in elements for k in m})
    batch["meta"] = {k: [m.get(k) for _, m in elements] for k in keys}
    return batch


def find_eval_entry(data_config: Mapping[str, Any], dataset_name: str, split: str) -> Mapping:
    entries = list(_get(data_config, "eval_datasets", []))
    for entry in entries:
        if entry.get("name") == dataset_name and entry.get("split", "eval") == split:
            return entry
    known = [(e.get("name"), e.get("split", "eval")) for e in entries]
    raise KeyError(
        f"no eval dataset {dataset_name!r} split {split!r} in data_config.eval_datasets; "
        f"configured: {known}"
    )


def build_eval_dataset(
    data_config: Mapping[str, Any],
    dataset_name: str,
    split: str,
    *,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict[str, Any]]:
    """Every example of one eval split, once, in order, as padded batches.

    Batch: the CONTRACTS.md arrays without `labels`, plus `valid` int32 [B] (0 on padding) and
    host-side `meta` (lists of length B: id, question, answers, captions, choices, answer_index,
    label, instruction, dataset, error...). Every process yields the same number of batches
    (`ceil(ceil(N / process_count) / B)`), so collective eval steps stay in lockstep.
    Batch size: `eval_batch_size` (default `global_batch_size`) // process_count.
    """
    entry = find_eval_entry(data_config, dataset_name, split)
    spec = sources.resolve_spec(entry)
    records = sources.load_records(entry, float(_get(data_config, "max_bad_fraction", 0.01)))
    batch_size = _local_batch_size(
        int(_get(data_config, "eval_batch_size", data_config["global_batch_size"])), process_count
    )
    per_process = math.ceil(len(records) / process_count)
    num_batches = math.ceil(per_process / batch_size)
    shard = grain.MapDataset.source(records)[process_index::process_count]
    indices = grain.MapDataset.range(num_batches * batch_size)
    dataset = indices.map(_EvalExample(data_config, spec, shard, records[0])).batch(
        batch_size, batch_fn=_eval_batch
    )
    stream = dataset.to_iter_dataset()
    options = _multiprocessing(data_config)
    if options is not None:
        stream = stream.mp_prefetch(options)
    return _count_eval_errors(
        stream,
        float(_get(data_config, "max_bad_fraction", 0.01)),
        len(records) // process_count or 1,
    )


def _count_eval_errors(stream, max_bad_fraction: float, expected: int) -> Iterator[dict]:
    bad = 0
    for batch in stream:
        for valid, error in zip(
            batch["valid"], batch["meta"].get("error", [None] * len(batch["valid"]))
        ):
            if valid and error:
                bad += 1
                logger.warning("eval example with unreadable image (%d so far): %s", bad, error)
                if bad > max_bad_fraction * expected:
                    raise BadDataError(
                        f"{bad} eval examples had unreadable images, more than "
                        f"max_bad_fraction={max_bad_fraction} of {expected}; last: {error}"
                    )
        yield batch
