"""Training metrics: metrics.jsonl + TensorBoard events (tensorboardX, no TensorFlow) + a console
progress line with rate and ETA. Only process 0 writes.

Both files go through `etils.epath`, so a bucket workdir (gs://, s3://...) holds them like a local
one. Objects in a bucket cannot be appended to: there, metrics.jsonl is rewritten whole at every
logged step (kilobytes; a resumed run first reads what is there), and TensorBoard's event file is
buffered and uploaded whole at each of tensorboardX's flushes (`EpathRecordWriter`, registered
for those URL schemes in place of tensorboardX's own, which need google-cloud-storage or boto3).

A resumed run (`start_step` > 0) first drops the metrics.jsonl rows past `start_step` (steps that
were lost with the interrupted run and are trained again), and its TensorBoard writer purges the
events past it (TensorBoard's `purge_step`), so each step is recorded once.
"""

from __future__ import annotations

import io
import json
import os
import time
import uuid
from typing import Any

import jax
from etils import epath

from ib_jax.checkpoint import is_remote

REMOTE_SCHEMES = ("gs", "s3", "az")


class EpathRecordWriter:
    """A tensorboardX record file on any epath filesystem: bytes are buffered, and each flush
    writes the whole file (objects in a bucket cannot be appended to)."""

    def __init__(self, path: str):
        self.path, self.buffer, self.closed = epath.Path(path), io.BytesIO(), False

    def write(self, data: bytes) -> None:
        """Buffer one record."""
        self.buffer.write(data)

    def flush(self) -> None:
        """Upload everything written so far (nothing after `close`)."""
        if not self.closed:
            self.path.write_bytes(self.buffer.getvalue())

    def close(self) -> None:
        """Upload a last time."""
        self.flush()
        self.closed = True


class _EpathRecordWriterFactory:
    """What tensorboardX's `register_writer_factory` expects: `open` and `directory_check`."""

    def open(self, path: str) -> EpathRecordWriter:
        """The record writer of one event file."""
        return EpathRecordWriter(path)

    def directory_check(self, path: str) -> None:
        """Make the log directory (a no-op on buckets, which have no directories)."""
        epath.Path(path).mkdir(parents=True, exist_ok=True)


def tensorboard_writer(logdir: str, purge_step: int | None = None) -> Any:
    """A tensorboardX `SummaryWriter` for `logdir`, local or on a bucket (see module docstring);
    TensorBoard hides the earlier events at or past `purge_step`. The evaluation job can use it
    for its own events."""
    from tensorboardX import SummaryWriter, record_writer

    for scheme in REMOTE_SCHEMES:
        record_writer.register_writer_factory(scheme, _EpathRecordWriterFactory())
    # tensorboardX names the file by the second and the host: a suffix keeps a writer started
    # within the same second (a fast restart) from overwriting the previous file.
    return SummaryWriter(
        str(logdir), purge_step=purge_step, filename_suffix=f".{uuid.uuid4().hex[:8]}"
    )


class JsonlFile:
    """Lines appended to a JSONL file: a local file is appended to; a bucket object is rewritten
    whole with every line so far (read first, so a resumed run keeps the earlier lines).

    `keep_through`: rows whose "step" is past it are dropped first (a resumed run's lost steps)."""

    def __init__(self, path: str, keep_through: int | None = None):
        self.path, self.remote = epath.Path(path), is_remote(path)
        lines = self.path.read_text().splitlines() if self.path.exists() else []
        kept = lines if keep_through is None else _rows_through(lines, keep_through)
        if len(kept) < len(lines):
            # Written whole then renamed (locally), so a crash here never loses the kept rows.
            temporary = self.path.parent / f"{self.path.name}.tmp-{uuid.uuid4().hex[:8]}"
            temporary.write_text("".join(f"{text}\n" for text in kept))
            temporary.replace(self.path)
        if self.remote:
            self.lines = kept
        else:
            self.file = open(self.path, "a")

    def write(self, record: dict[str, Any]) -> None:
        """Append one JSON line, durably (flushed, or uploaded)."""
        line = json.dumps(record)
        if self.remote:
            self.lines.append(line)
            self.path.write_text("".join(f"{text}\n" for text in self.lines))
        else:
            self.file.write(line + "\n")
            self.file.flush()

    def close(self) -> None:
        """Close the local file (a bucket object is complete after every write)."""
        if not self.remote:
            self.file.close()


def _rows_through(lines: list[str], step: int) -> list[str]:
    """The lines whose "step" is at most `step` (a torn last line, from a kill, is dropped too)."""
    kept = []
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if int(row.get("step", 0)) <= step:
            kept.append(line)
    return kept


def last_metrics(workdir: str) -> dict[str, float]:
    """The metrics of the last row of WORKDIR/metrics.jsonl, without its step ({} when none)."""
    path = epath.Path(workdir) / "metrics.jsonl"
    lines = _rows_through(path.read_text().splitlines() if path.exists() else [], 2**62)
    return {k: v for k, v in json.loads(lines[-1]).items() if k != "step"} if lines else {}


class MetricsWriter:
    """WORKDIR/metrics.jsonl, WORKDIR/tensorboard (`train/<name>`) and the console line."""

    def __init__(self, workdir: str, total_steps: int, start_step: int = 0):
        self.total_steps, self.start_step = total_steps, start_step
        # The ETA is timed from the first logged step on (it includes warm-up, not the rest).
        self.timed_from: tuple[int, float] | None = None
        self.enabled = jax.process_index() == 0
        if self.enabled:
            root = epath.Path(workdir)
            root.mkdir(parents=True, exist_ok=True)
            resumed = start_step if start_step > 0 else None
            self.jsonl = JsonlFile(os.fspath(root / "metrics.jsonl"), keep_through=resumed)
            self.tensorboard = tensorboard_writer(
                os.fspath(root / "tensorboard"), purge_step=start_step + 1 if resumed else None
            )

    def write(self, step: int, metrics: dict[str, float]) -> None:
        """Record `metrics` at `step` (needs loss, learning_rate, grad_norm, examples_per_s;
        step_time_s, when given, estimates the ETA of the first line)."""
        if not self.enabled:
            return
        self.jsonl.write({"step": step, **metrics})
        for name, value in metrics.items():
            self.tensorboard.add_scalar(f"train/{name}", value, step)
        print(
            f"step {step}/{self.total_steps} loss {metrics['loss']:.4f} lr {metrics['learning_rate']:.2e} "
            f"|g| {metrics['grad_norm']:.3f} {metrics['examples_per_s']:.1f} ex/s"
            + (f" mfu {metrics['mfu']:.1%}" if "mfu" in metrics else "")
            + f" ETA {_duration(self.eta(step, metrics.get('step_time_s')))}",
            flush=True,
        )

    def eta(self, step: int, step_time_s: float | None = None) -> float:
        """Seconds left after `step`: the mean time per step since the first logged one, or
        `step_time_s` (the trainer's measure) for that first one."""
        now = time.perf_counter()
        if self.timed_from is None:
            self.timed_from = (step, now)
        first_step, first_time = self.timed_from
        per_step = (now - first_time) / (step - first_step) if step > first_step else step_time_s
        return (per_step or 0.0) * max(self.total_steps - step, 0)

    def close(self) -> None:
        """Close the files (process 0)."""
        if self.enabled:
            self.jsonl.close()
            self.tensorboard.close()


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"
