"""The training pipeline: the dataset mixture as endless per-process batches (Grain).

Per process (docs/CONTRACTS.md for the batch):

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

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import grain

from data_pipelines import mixing, sources
from data_pipelines.preprocess import (
    BAD_KEY,
    DATASET_KEY,
    BadDataError,
    ExamplePreprocessor,
    local_batch_size,
    multiprocessing_options,
    setting,
)

logger = logging.getLogger(__name__)


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
            # The bound applies to at least `min_examples`, so one bad image among the first
            # few examples does not stop a run that would stay well under the fraction.
            if self._bad > self._max_bad_fraction * max(self._seen, self._min_examples):
                raise BadDataError(
                    f"{self._bad} of {self._seen} examples were bad, more than max_bad_fraction="
                    f"{self._max_bad_fraction}; last: {element[BAD_KEY]}"
                )

    def get_state(self) -> dict[str, Any]:
        """The parent's state plus the counts: a resumed run keeps its bound where it left off."""
        return {
            "parent": self._parent.get_state(),
            "seen": self._seen,
            "bad": self._bad,
            "per_dataset": dict(self._per_dataset),
        }

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Restores a `get_state()` result (parent position and counts)."""
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
# The mixture
# ------------------------------------------------------------------------------------------


# Threads decoding ahead, shared among the datasets (Grain's default: 16 per dataset).
_READ_THREADS = 16


def _shard(
    records: Sequence[Any], name: str, process_index: int, process_count: int
) -> grain.MapDataset:
    """This process's records: every `process_count`-th one, starting at `process_index`.

    Sharding by stride (not by contiguous block) keeps the shards within one record of each other
    in size and spreads any ordering of the annotation file over all processes."""
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
    entries = list(setting(data_config, "datasets"))
    if not entries:
        raise ValueError("data config has no training datasets ('datasets' is empty)")
    seed = int(setting(data_config, "seed"))
    max_bad_fraction = float(setting(data_config, "max_bad_fraction"))
    streams, sizes, multipliers, video = {}, {}, {}, {}
    for position, entry in enumerate(entries):
        name = sources.entry_name(entry)
        if name in streams:
            raise ValueError(f"dataset {name!r} appears twice in the data config")
        spec = sources.resolve_spec(entry)
        records = sources.load_records(entry, max_bad_fraction)
        sizes[name] = len(records)
        multiplier = entry.get("multiplier")
        multipliers[name] = 1.0 if multiplier is None else float(multiplier)
        video[name] = spec.is_video
        if multipliers[name] == 0:
            logger.info("dataset %s has multiplier 0: left out of the mixture", name)
            continue
        # A distinct shuffle seed per dataset, so two datasets of equal size are not shuffled
        # in lockstep.
        stream = (
            _shard(records, name, process_index, process_count)
            .shuffle(seed=seed * 1009 + position)  # reshuffled every epoch by grain
            .repeat()
            .map_with_index(ExamplePreprocessor(data_config, spec, train=True, keep_text=keep_text))
        )
        # Grain's default read options prefetch 500 examples with 16 threads per dataset: with
        # 13 datasets every (re)start of the iterator (a restore) prepared 6,500 examples
        # before the first batch (38 s on the miniature). A few examples per thread suffice.
        threads = max(1, _READ_THREADS // len(entries))
        read = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=4 * threads)
        streams[name] = stream.to_iter_dataset(read)
    # Images [B, H, W, 3] and clips [B, F, H, W, 3] cannot be stacked into one batch.
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
    batch_size = local_batch_size(int(data_config["global_batch_size"]), process_count)
    examples, _ = build_train_examples(
        data_config, process_index=process_index, process_count=process_count
    )
    options = multiprocessing_options(data_config)
    if options is not None:
        examples = examples.mp_prefetch(options)
    # The guard runs in the main process, after the workers: a bad example is dropped before
    # batching, so every batch is full and the step never sees a marker.
    guarded = BadExampleGuard(
        examples,
        float(setting(data_config, "max_bad_fraction")),
        int(setting(data_config, "bad_fraction_min_examples")),
    )
    # drop_remainder: the stream is endless, and a fixed batch shape means one compiled step.
    batches = guarded.batch(batch_size, drop_remainder=True)
    prefetch = int(setting(data_config, "prefetch_batches"))
    if prefetch > 0:
        batches = grain.experimental.ThreadPrefetchIterDataset(
            batches, prefetch_buffer_size=prefetch
        )
    return batches
