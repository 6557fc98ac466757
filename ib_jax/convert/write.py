"""Turn a `core.Plan` into parameters group by group, in the unscanned or the scanned layout.

A *unit* is what is read and converted at once: one layer (`.../layers_N/...` or
`qformer/groups_N/...`) in the unscanned layout; one stacked parameter (a leaf of a layer, for all
layers: `[L, ...]`) in the scanned layout; the other parameters grouped by their first two names.
Units are handed to a sink in pieces of about `flush_bytes`, so a conversion holds at most
`flush_bytes` plus one unit of converted arrays, besides the one source file being read.

Sinks: `MemorySink` (a nested dict, for `load_pretrained`), `OrbaxSink` (a `params/` Orbax
checkpoint written piece by piece with Orbax's partial saving; the result is one ordinary PyTree
checkpoint, restored by `StandardCheckpointer` as before).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable
from typing import Any

import numpy as np
from flax import traverse_util

from ib_jax.convert import readers
from ib_jax.convert.core import Assignment, Plan, stacked_name

DEFAULT_FLUSH_BYTES = 128 * 2**20

Sink = Callable[[dict[str, Any]], None]


@dataclasses.dataclass
class WriteStats:
    """What the writer held: the most converted bytes handed over at once, the largest unit."""

    pieces: int = 0
    max_piece_bytes: int = 0
    max_unit_bytes: int = 0
    total_bytes: int = 0


def units(plan: Plan, scan: bool) -> list[dict[str, list[Assignment]]]:
    """[{output path: [assignments]}], in plan order; several assignments (the layers of a stack,
    in order) are stacked along a new leading axis, one assignment is the array itself."""
    grouped: dict[str, dict[str, dict[int, Assignment]]] = {}
    for target, assignment in plan.assignments.items():
        stacked = stacked_name(target)
        parts = target.split("/")
        if stacked is None:
            unit, path, index = "/".join(parts[:2]), target, 0
        elif scan:
            unit, path, index = stacked[0], stacked[0], stacked[1]
        else:
            depth = next(i for i, p in enumerate(parts) if p.startswith(("layers_", "groups_")))
            unit, path, index = "/".join(parts[: depth + 1]), target, 0
        grouped.setdefault(unit, {}).setdefault(path, {})[index] = assignment
    return [
        {path: [members[i] for i in sorted(members)] for path, members in unit.items()}
        for unit in grouped.values()
    ]


def _materialize(members: list[Assignment], stacked: bool) -> np.ndarray:
    if not stacked:
        (assignment,) = members
        return assignment.read()
    first = members[0]
    # Filled layer by layer: the stack and one layer's tensor, never a list of all layers.
    out = np.empty((len(members),) + first.shape, first.dtype)
    for i, assignment in enumerate(members):
        out[i] = assignment.read()
    return out


def write(plan: Plan, scan: bool, sink: Sink, flush_bytes: int = DEFAULT_FLUSH_BYTES) -> WriteStats:
    """Read, convert and hand the plan's parameters to `sink` as nested dicts of disjoint pieces."""
    stats = WriteStats()
    pending: dict[str, np.ndarray] = {}
    held = 0

    def flush():
        nonlocal pending, held
        if pending:
            sink(traverse_util.unflatten_dict(pending, sep="/"))
            stats.pieces += 1
            stats.max_piece_bytes = max(stats.max_piece_bytes, held)
            pending, held = {}, 0

    try:
        for unit in units(plan, scan):
            unit_bytes = 0
            for path, members in unit.items():
                array = _materialize(members, stacked=scan and _is_stack(path))
                pending[path] = array
                unit_bytes += array.nbytes
            held += unit_bytes
            stats.max_unit_bytes = max(stats.max_unit_bytes, unit_bytes)
            stats.total_bytes += unit_bytes
            if held >= flush_bytes:
                flush()
        flush()
    finally:
        readers.release()
    return stats


def _is_stack(path: str) -> bool:
    return any(part in ("layers", "groups") for part in path.split("/"))


class MemorySink:
    """Collects the pieces into one nested dict."""

    def __init__(self):
        self.flat: dict[str, np.ndarray] = {}

    def __call__(self, piece: dict[str, Any]) -> None:
        self.flat.update(traverse_util.flatten_dict(piece, sep="/"))

    def result(self) -> dict[str, Any]:
        """Everything received, as one nested dict."""
        return traverse_util.unflatten_dict(self.flat, sep="/")


class OrbaxSink:
    """Writes `directory` as an Orbax PyTree checkpoint, one piece per partial save.

    Orbax's partial saving writes into a session next to the target and commits it with
    `finalize`; the PyTree lands in the session's `state/` item, which is moved to `directory`.
    Without partial saving (older Orbax), the pieces are gathered and saved at once.
    """

    def __init__(self, directory: str):
        self.directory = os.path.abspath(directory)
        self.session = self.directory + ".partial"
        try:
            from orbax.checkpoint.experimental import v1 as ocp_v1
            from orbax.checkpoint.experimental.v1 import partial
        except ImportError:
            partial = None
        else:
            # zstd doubles what Orbax holds while it writes (and glibc keeps much of it after):
            # measured 2x a piece with compression, 1x without. Weights barely compress anyway.
            self._context = ocp_v1.Context()
            self._context.array.saving.use_compression = False
        self._partial = partial
        self._gathered = MemorySink()
        if os.path.exists(self.directory) or os.path.exists(self.session):
            raise FileExistsError(f"{self.directory} (or {self.session}) exists already")

    def __call__(self, piece: dict[str, Any]) -> None:
        if self._partial is None:
            self._gathered(piece)
        else:
            with self._context:
                self._partial.save(self.session, piece)

    def close(self) -> None:
        """Commit the checkpoint (after the last piece)."""
        if self._partial is None:
            import orbax.checkpoint as ocp

            with ocp.StandardCheckpointer() as checkpointer:
                checkpointer.save(self.directory, self._gathered.result())
            return
        with self._context:
            self._partial.finalize(self.session)
        os.rename(os.path.join(self.session, "state"), self.directory)
        shutil.rmtree(self.session)

    def abort(self) -> None:
        """Remove whatever a failed conversion left (the session and its temporary copies)."""
        parent, name = os.path.split(self.session)
        for entry in os.listdir(parent):
            if entry.startswith(name):
                shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)
