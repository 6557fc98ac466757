"""The trainer's side of the data pipeline: next batch, a dead worker named, workers shut down.

Grain's worker processes (`data.worker_count` > 0) can die under the trainer (the OOM killer, an
operator's `kill`); Grain then raises "Worker process was terminated unexpectedly with exit code
-9" without saying which one. `DataFeed` keeps the worker processes it has seen, so the error
names the worker (its process name and pid) and how it ended, and `close` stops the workers and
prefetch threads when the run ends for any reason, so none outlives the job or prints at exit.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
from typing import Any

logger = logging.getLogger(__name__)

GRAIN_WORKER_PREFIX = "grain-process-prefetch"


class DataWorkerError(RuntimeError):
    """A data worker process died; the message names it (pid, name) and its exit status."""


def _how_it_ended(exitcode: int | None) -> str:
    if exitcode is None:
        return "is unresponsive"
    if exitcode < 0:
        try:
            return f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"exited with status {exitcode}"


class DataFeed:
    """Batches from a data iterator; a worker's death becomes a `DataWorkerError` naming it."""

    def __init__(self, data_iterator: Any, worker_count: int):
        self.iterator, self.worker_count = data_iterator, worker_count
        self._workers: dict[int, multiprocessing.process.BaseProcess] = {}

    def _note_workers(self) -> None:
        # active_children() forgets a process once it has ended: remember each while alive.
        for process in multiprocessing.active_children():
            if process.name.startswith(GRAIN_WORKER_PREFIX):
                self._workers.setdefault(process.pid, process)

    def next(self, step: int) -> Any:
        """The batch for `step` (the step only names the moment in an error)."""
        try:
            batch = next(self.iterator)
        except RuntimeError as error:
            dead = [p for p in self._workers.values() if p.exitcode not in (None, 0)]
            if not dead and "Worker process" not in str(error):
                raise
            named = (
                "; ".join(
                    f"data worker {p.name} (pid {p.pid}) {_how_it_ended(p.exitcode)}" for p in dead
                )
                or f"a data worker: {str(error).split('.')[0]}"
            )
            raise DataWorkerError(
                f"{named} while preparing the batch for step {step} (data.worker_count="
                f"{self.worker_count}); restart the job to resume from the last checkpoint"
            ) from error
        if self.worker_count:
            self._note_workers()
        return batch

    def close(self) -> None:
        """Stop worker processes and prefetch threads (Grain iterators' `close`)."""
        close = getattr(self.iterator, "close", None)
        if close is None:
            return
        try:
            close()
        except Exception:  # a worker that is already gone must not mask the job's own error
            logger.debug("closing the data iterator failed", exc_info=True)
