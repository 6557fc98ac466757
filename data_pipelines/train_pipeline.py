"""The training pipeline: the dataset mixture as endless per-process batches (Grain).

One global order for every process count (docs/CONTRACTS.md for the batch):

  records (sources) -> shuffle(seed, reshuffled every epoch) -> repeat
    -> map_with_index(template + decode + resize + tokenize)          } per dataset, indexable
    -> mix(weights ~ sqrt(size) x multiplier)                         } (MapDataset)
    -> a bad example replaced by one further on (global_order.Substituted)
    -> this process's block of each global batch (global_order.ProcessRows)
    -> read ahead (threads) -> mp_prefetch(worker_count)
    -> count bad examples (stop past max_bad_fraction) -> batch(drop_remainder) -> prefetch

The global batch at step s is a function of (seed, data config) alone, not of the process or
worker count, so a run is reproducible and its iterator state (`get_state()/set_state()`, a global
example index) resumes at exactly the next batch on any process count. A bad example
(unreadable/missing/truncated image, malformed record) never raises inside a worker: the worker
returns a marker naming the file and the reason, it is replaced by a good example at a fixed
offset, and the main process counts and logs it, stopping with an error once the fraction of bad
examples passes `max_bad_fraction`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import grain

from data_pipelines import global_order, mixing, sources
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
# Bad-example guard (main process): count, log, stop past the bound
# ------------------------------------------------------------------------------------------


class _GuardIterator(grain.DatasetIterator):
    def __init__(
        self,
        parent: grain.DatasetIterator,
        max_bad_fraction: float,
        min_examples: int,
        counts: Mapping[str, Any] | None = None,
    ):
        super().__init__(parent)
        self._max_bad_fraction = max_bad_fraction
        self._min_examples = min_examples
        counts = counts or {}
        self._seen, self._bad = int(counts.get("seen", 0)), int(counts.get("bad", 0))
        self._per_dataset: dict[str, int] = dict(counts.get("per_dataset", {}))

    def _count_bad(self, reason: str) -> None:
        self._seen += 1
        self._bad += 1
        logger.warning("skipped bad example (%d of %d so far): %s", self._bad, self._seen, reason)
        # The bound applies to at least `min_examples`, so one bad image among the first
        # few examples does not stop a run that would stay well under the fraction.
        if self._bad > self._max_bad_fraction * max(self._seen, self._min_examples):
            raise BadDataError(
                f"{self._bad} of {self._seen} examples were bad, more than max_bad_fraction="
                f"{self._max_bad_fraction}; last: {reason}"
            )

    def __next__(self) -> dict[str, Any]:
        while True:
            element = next(self._parent)
            # The global order substitutes bad examples (global_order.Substituted): count them.
            for reason in element.pop(global_order.SKIPPED_KEY, ()):
                self._count_bad(reason)
            name = element.pop(DATASET_KEY, "?")
            if BAD_KEY not in element:
                self._seen += 1
                self._per_dataset[name] = self._per_dataset.get(name, 0) + 1
                return element
            self._count_bad(element[BAD_KEY])
            if global_order.SKIPPED_KEY in element:  # no good substitute either
                raise BadDataError(f"no good example in {global_order.SUBSTITUTE_TRIES} tries")

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

    def __init__(
        self,
        parent: grain.IterDataset,
        max_bad_fraction: float,
        min_examples: int = 100,
        counts: Mapping[str, Any] | None = None,
    ):
        super().__init__(parent)
        self._max_bad_fraction = max_bad_fraction
        self._min_examples = min_examples
        self._counts = counts  # where a restored run's counts start

    def __iter__(self) -> _GuardIterator:
        return _GuardIterator(
            self._parent.__iter__(), self._max_bad_fraction, self._min_examples, self._counts
        )


def find_guard(iterator: grain.DatasetIterator) -> _GuardIterator | None:
    """The bad-example guard inside a training iterator (for its `counts`)."""
    stack = [iterator]
    while stack:
        current = stack.pop()
        if isinstance(current, _GuardIterator):
            return current
        stack.extend(getattr(current, "_parents", ()))
        if isinstance(current, global_order.GlobalOrderIterator):
            stack.append(current.inner)
    return None


# ------------------------------------------------------------------------------------------
# The mixture
# ------------------------------------------------------------------------------------------


def global_examples(
    data_config: Mapping[str, Any], *, keep_text: bool = False
) -> tuple[grain.MapDataset, dict[str, float], dict[str, Any]]:
    """The endless training mixture indexed by global example index, its weights, and the
    fingerprint of its order (seed, {dataset: [size, weight]}).

    Each element is one example dict (+ `_dataset`), or a bad marker. The same for every process
    count: processes take their rows of it (global_order)."""
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
        if not records:
            raise ValueError(f"dataset {name!r} has no examples")
        # A distinct shuffle seed per dataset, so two datasets of equal size are not shuffled
        # in lockstep; grain reshuffles every epoch of the repeat.
        streams[name] = (
            grain.MapDataset.source(records)
            .shuffle(seed=seed * 1009 + position)
            .repeat()
            .map_with_index(ExamplePreprocessor(data_config, spec, train=True, keep_text=keep_text))
        )
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
    order = {"seed": seed, "datasets": {n: [sizes[n], round(weights[n], 12)] for n in streams}}
    return mixing.mix(streams, weights), weights, order


def build_train_examples(
    data_config: Mapping[str, Any],
    *,
    process_index: int = 0,
    process_count: int = 1,
    keep_text: bool = False,
) -> tuple[grain.IterDataset, dict[str, float]]:
    """This process's unbatched examples (every `process_count`-th of the global order, bad
    markers included) and the mixture weights: what `data_pipelines.preview` shows."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} not in [0, {process_count})")
    examples, weights, _ = global_examples(data_config, keep_text=keep_text)
    return examples[process_index::process_count].to_iter_dataset(), weights


def build_train_dataset(
    data_config: Mapping[str, Any], *, process_index: int, process_count: int
) -> grain.IterDataset:
    """Per-process training batches, endless, in the global order (data_pipelines/global_order).

    Yields dicts with the CONTRACTS.md keys, leading dim `global_batch_size // process_count`
    (pixel_values [B, H, W, 3], ids/masks [B, L] int32, labels [B, Lo] int32 with -100 at pads):
    process p's rows of global batch s are its block p of the batch, the same examples for any
    process count. `iter(ds)` supports `get_state()` / `set_state()`; a state restores into a
    pipeline of the same data config on any process count (that divides the global batch).
    """
    global_batch = int(data_config["global_batch_size"])
    local = local_batch_size(global_batch, process_count)
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} not in [0, {process_count})")
    examples, _, order = global_examples(data_config)
    options = multiprocessing_options(data_config)
    prefetch = int(setting(data_config, "prefetch_batches"))

    def batches(stream: grain.IterDataset, counts: Mapping[str, Any]) -> grain.IterDataset:
        """Examples -> guarded batches of `local` (+ workers before, a prefetch thread after)."""
        if options is not None:
            stream = stream.mp_prefetch(options)
        # The guard runs in the main process, after the workers: bad examples are counted and
        # the run stopped past the bound; every batch is full and never holds a marker.
        guarded = BadExampleGuard(
            stream,
            float(setting(data_config, "max_bad_fraction")),
            int(setting(data_config, "bad_fraction_min_examples")),
            counts,
        )
        # drop_remainder: the stream is endless, and a fixed batch shape means one compiled step.
        batched = guarded.batch(local, drop_remainder=True)
        if prefetch > 0:
            batched = grain.experimental.ThreadPrefetchIterDataset(
                batched, prefetch_buffer_size=prefetch
            )
        return batched

    return global_order.GlobalOrderDataset(
        global_order.Substituted(examples),
        global_batch=global_batch,
        index=process_index,
        count=process_count,
        order=order,
        batches=batches,
    )
