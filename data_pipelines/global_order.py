"""A global data order: the global batch at step s is the same whatever the number of processes.

The training mixture is one endless `grain.MapDataset` indexed by a *global* example index. The
global batch b holds the indices [b*B, (b+1)*B) (B = global_batch_size); process p of P reads
the contiguous block of B/P of them that its devices hold in the mesh (process 0's devices come
first), so the global batch is the same rows in the same order for any P.

The iterator's state is therefore global: the next global index (the same on every process), a
fingerprint of the order (seed, datasets, their sizes and weights) and the bad-example counts. A
run saved by N processes resumes on M (any M that divides B): each process restarts its reads at
that index (as Grain's `ElasticIterator` does; ours keeps contiguous rows per process and
substitutes bad examples instead of dropping them, which would make the order depend on who
read what). A state saved with another order (changed datasets, weights or seed) is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import grain

from data_pipelines.preprocess import BAD_KEY

FORMAT = "global-order-1"  # the state's format; per-process states of older runs have none
SKIPPED_KEY = "_skipped"  # reasons of the bad examples an element stands in for
# A bad example at global index i is replaced by the one at i + k * stride (k = 1, 2, ...): far
# enough not to repeat a neighbour, and a function of i alone.
SUBSTITUTE_STRIDE = 1_000_003
SUBSTITUTE_TRIES = 16
# Threads preparing examples ahead and examples buffered: one pool for the whole mixture (Grain's
# default per dataset, 16 threads and 500 examples, made a 13-source restore prepare 6,500).
READ_THREADS = 16


class Substituted(grain.MapDataset):
    """Global index -> an example; a bad one (a `BAD_KEY` marker) is replaced by the example
    `SUBSTITUTE_STRIDE` further on, its reasons listed under `SKIPPED_KEY` for the guard to count.
    After `SUBSTITUTE_TRIES` bad ones the last marker is returned (the guard stops the run)."""

    def __init__(self, parent: grain.MapDataset):
        super().__init__(parent)

    def __len__(self) -> int:
        return len(self._parent)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return self.slice(index)
        reasons = []
        for attempt in range(SUBSTITUTE_TRIES):
            element = self._parent[index + attempt * SUBSTITUTE_STRIDE]
            if BAD_KEY not in element:
                break
            reasons.append(element[BAD_KEY])
        element[SKIPPED_KEY] = reasons
        return element


class ProcessRows(grain.MapDataset):
    """Process `index` of `count`'s examples from global index `start` on: its k-th example is
    global row start + (k // Bl) * B + index * Bl + k % Bl (B global, Bl = B / count rows)."""

    def __init__(
        self, parent: grain.MapDataset, start: int, global_batch: int, index: int, count: int
    ):
        super().__init__(parent)
        if global_batch % count:
            raise ValueError(
                f"global_batch_size={global_batch} is not divisible by process_count={count}"
            )
        self._start, self._global, self._index = start, global_batch, index
        self._local = global_batch // count

    def __len__(self) -> int:
        return (len(self._parent) - self._start) // self._global * self._local

    def __getitem__(self, k: Any) -> Any:
        if isinstance(k, slice):
            return self.slice(k)
        batch, row = divmod(k, self._local)
        return self._parent[self._start + batch * self._global + self._index * self._local + row]


class GlobalOrderDataset(grain.IterDataset):
    """Batches of process `index` of `count` in the global order of `examples` (see module).

    `batches(stream, counts)` turns this process's example stream (an IterDataset) into batches
    of B/count, restoring the bad-example `counts` ({} for none) into its guard; `order` is the
    fingerprint saved with the state."""

    def __init__(
        self,
        examples: grain.MapDataset,
        *,
        global_batch: int,
        index: int,
        count: int,
        order: Mapping[str, Any],
        batches: Callable[[grain.IterDataset, Mapping[str, Any]], grain.IterDataset],
    ):
        super().__init__()
        self.examples, self.global_batch, self.index, self.count = (
            examples,
            global_batch,
            index,
            count,
        )
        self.order, self.batches = dict(order), batches

    def __iter__(self) -> GlobalOrderIterator:
        return GlobalOrderIterator(self)


class GlobalOrderIterator(grain.DatasetIterator):
    """The batches of a `GlobalOrderDataset`; its state is the same on every process but for
    the bad-example counts, and restores on any process count (`set_state` rebuilds the reads
    from the saved global index)."""

    def __init__(self, dataset: GlobalOrderDataset):
        super().__init__()
        self._dataset, self._next_index, self._counts = dataset, 0, {}
        self._inner: grain.DatasetIterator | None = None

    @property
    def inner(self) -> grain.DatasetIterator:
        """The batch iterator reading from the current global index (built on first use)."""
        if self._inner is None:
            d = self._dataset
            rows = ProcessRows(d.examples, self._next_index, d.global_batch, d.index, d.count)
            local = d.global_batch // d.count
            read = grain.ReadOptions(
                num_threads=READ_THREADS, prefetch_buffer_size=max(2 * local, READ_THREADS)
            )
            self._inner = iter(d.batches(rows.to_iter_dataset(read), self._counts))
        return self._inner

    def __next__(self) -> Any:
        batch = next(self.inner)
        self._next_index += self._dataset.global_batch
        return batch

    def get_state(self) -> dict[str, Any]:
        """{format, next_index, global_batch_size, order, counts}: JSON, global but the counts."""
        counts = _find_counts(self._inner.get_state()) if self._inner else self._counts
        return {
            "format": FORMAT,
            "next_index": self._next_index,
            "global_batch_size": self._dataset.global_batch,
            "order": self._dataset.order,
            "counts": counts,
        }

    def mismatch(self, state: Mapping[str, Any]) -> str | None:
        """Why `state` cannot be restored here (another format or data order); None if it can."""
        if state.get("format") != FORMAT:
            return (
                "its data state is per process (saved before the global data order): "
                "resume it with the code that wrote it, or start a new workdir"
            )
        saved, here = state["order"], self._dataset.order
        if saved == here:
            return None
        changed = sorted(
            key
            for key in set(saved["datasets"]) | set(here["datasets"])
            if saved["datasets"].get(key) != here["datasets"].get(key)
        )
        what = f"datasets {changed} (size, weight)" if changed else f"seed {saved['seed']}"
        return f"the data order changed since it was saved: {what} differ"

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Continue at the saved global index (from a state of any process, any count)."""
        if problem := self.mismatch(state):
            raise ValueError(problem)
        self.close()
        self._next_index, self._counts = int(state["next_index"]), dict(state["counts"])

    def close(self) -> None:
        """Stop the reads (worker processes, prefetch threads); the next batch restarts them."""
        if self._inner is not None:
            close = getattr(self._inner, "close", None)
            if close is not None:
                close()
            self._inner = None


def _find_counts(state: Any) -> dict[str, Any]:
    """The guard's counts ({"seen", "bad", "per_dataset"}) inside a nested iterator state."""
    if isinstance(state, Mapping):
        if {"seen", "bad", "per_dataset"} <= set(state):
            return {key: state[key] for key in ("seen", "bad", "per_dataset")}
        for value in state.values():
            if found := _find_counts(value):
                return found
    return {}
