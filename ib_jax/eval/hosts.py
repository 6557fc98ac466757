"""What the processes of an eval job agree on: host-side values gathered or decided once.

Device work (generation, ranking) is one jitted collective per batch, so every process must run
the same number of steps with the same shapes; host-side values (predictions, metrics, which
checkpoint is next, a failure on one host) travel as JSON through `process_allgather`. With one
process every function here is a plain call.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from typing import Any, TypeVar

import jax
import numpy as np

from ib_jax import distributed

T = TypeVar("T")


class RemoteError(RuntimeError):
    """Another process failed at a point where all processes must agree; its message."""


_barriers = itertools.count()


def sync(what: str) -> None:
    """Wait for every process at a coordination-service barrier (no-op with one process).

    Called before collectives that processes may reach far apart (after a compile, after
    process 0 computed a metric): XLA:CPU's Gloo gives up after 30 s, the barrier does not.
    """
    if jax.process_count() > 1:
        distributed.barrier(f"ib_jax_eval_{what}_{next(_barriers)}")


def allgather_ints(values: list[int]) -> np.ndarray:
    """[P, len(values)] int32: every process's `values`, in process order (same length everywhere)."""
    local = np.asarray(values, np.int32)
    if jax.process_count() == 1:
        return local[None]
    from jax.experimental import multihost_utils

    sync("allgather")

    return np.asarray(multihost_utils.process_allgather(local)).reshape(jax.process_count(), -1)


def allgather_json(value: Any) -> list[Any]:
    """Every process's JSON-able `value`, in process order."""
    if jax.process_count() == 1:
        return [value]
    data = np.frombuffer(json.dumps(value).encode(), np.uint8)
    sizes = allgather_ints([data.size])[:, 0]
    # Padded to a power of two: the gather compiles once per bucket, not once per length.
    width = 1 << max(int(sizes.max()) - 1, 0).bit_length()
    padded = np.zeros(width, np.uint8)
    padded[: data.size] = data
    from jax.experimental import multihost_utils

    sync("allgather")
    rows = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(sizes), width)
    return [json.loads(bytes(row[:size]).decode()) for row, size in zip(rows, sizes)]


def raise_if_any(error: BaseException | None, what: str) -> None:
    """Every process passes its own error (or None); if any process had one, all raise: the own
    error where there is one, else RemoteError naming the first failed process and its message."""
    if jax.process_count() == 1:
        if error is not None:
            raise error
        return
    failed = allgather_ints([error is not None])[:, 0]
    if not failed.any():
        return
    messages = allgather_json(None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    process = int(np.flatnonzero(failed)[0])
    raise RemoteError(f"process {process} could not {what}: {messages[process]}")


def on_first(fn: Callable[[], T]) -> T:
    """`fn()` run by process 0 only, its JSON-able result returned on every process; an error
    there is raised everywhere (as RemoteError on the other processes), so all stay in step."""
    if jax.process_count() == 1:
        return fn()
    outcome: dict[str, Any] | None = None
    error: BaseException | None = None
    if jax.process_index() == 0:
        try:
            outcome = {"value": fn()}
        except Exception as e:  # handed to every process, raised below
            error, outcome = e, {"error": f"{type(e).__name__}: {e}"}
    outcome = allgather_json(outcome)[0]
    if error is not None:
        raise error
    if "error" in outcome:
        raise RemoteError(f"on process 0: {outcome['error']}")
    return outcome["value"]


__all__ = ["RemoteError", "sync", "allgather_ints", "allgather_json", "raise_if_any", "on_first"]
