"""What the eval job writes under WORKDIR/eval: metrics.jsonl, TensorBoard scalars, one
predictions file per evaluation and checkpoint, and the record of finished steps (done.json)."""

from __future__ import annotations

import json
import time
from typing import Any

import jax
from etils import epath
from tensorboardX import SummaryWriter


class Outputs:
    """metrics.jsonl + TensorBoard + per-example predictions under WORKDIR/eval, written by
    process 0 only (every process keeps the list of failures, for the exit status). Paths go
    through `etils.epath`, so a bucket workdir (gs://...) is written where it is."""

    def __init__(self, workdir: str):
        self.root = epath.Path(workdir) / "eval"
        self.writes = jax.process_index() == 0
        if self.writes:
            self.root.mkdir(parents=True, exist_ok=True)
        self._writer = None
        self.failed: list[tuple[str, str, str]] = []  # (checkpoint tag, dataset, error)

    @property
    def writer(self) -> Any:
        """The TensorBoard writer, made on first use."""
        if self._writer is None:
            self._writer = SummaryWriter(str(self.root / "tensorboard"))
        return self._writer

    def _append_metrics(self, line: dict[str, Any]) -> None:
        # Rewritten whole rather than appended: object stores have no append.
        path = self.root / "metrics.jsonl"
        previous = path.read_text() if path.exists() else ""
        path.write_text(previous + json.dumps(line) + "\n")

    def write(
        self,
        dataset: str,
        tag: str,
        step: int | None,
        metrics: dict[str, float],
        predictions: list[dict[str, Any]],
    ) -> None:
        """Record one dataset's results for checkpoint `tag`: predictions file, metrics line,
        TensorBoard scalars (at `step`, 0 for a checkpoint outside the run)."""
        if not self.writes:
            return
        path = self.root / "predictions" / dataset / f"{tag}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(record) + "\n" for record in predictions))
        self._append_metrics(
            {"checkpoint": tag, "step": step, "dataset": dataset, "time": time.time(), **metrics}
        )
        for name, value in metrics.items():
            self.writer.add_scalar(f"eval/{dataset}/{name}", float(value), global_step=step or 0)
        self.writer.flush()

    def write_failure(self, dataset: str, tag: str, step: int | None, error: str) -> None:
        """Record that `dataset` could not be evaluated on checkpoint `tag`: a metrics line with
        its error (no metric), and an entry in `failed` for the exit status."""
        if self.writes:
            line = {"checkpoint": tag, "step": step, "dataset": dataset, "time": time.time()}
            self._append_metrics(dict(line, failed=True, error=error))
        self.failed.append((tag, dataset, error))

    def done_steps(self) -> set[int]:
        """Steps a watch job has finished (all datasets written), from eval/done.json."""
        path = self.root / "done.json"
        return set(json.loads(path.read_text())["steps"]) if path.exists() else set()

    def mark_done(self, step: int) -> None:
        """Add `step` to eval/done.json, so a restarted watch job skips it."""
        if not self.writes:
            return
        steps = sorted(self.done_steps() | {step})
        tmp = self.root / "done.json.tmp"
        tmp.write_text(json.dumps({"steps": steps}))
        # Written aside and renamed into place: a crash never leaves half a file.
        tmp.replace(self.root / "done.json")

    def close(self) -> None:
        """Close the TensorBoard writer if one was made."""
        if self._writer is not None:
            self._writer.close()
