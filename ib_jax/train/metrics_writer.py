"""Training metrics: metrics.jsonl + TensorBoard events (tensorboardX, no TensorFlow) + a console
progress line with rate and ETA. Only process 0 writes.

Both files go through `etils.epath`, so a bucket workdir (gs://, s3://...) holds them like a local
one. Objects in a bucket cannot be appended to: there, metrics.jsonl is rewritten whole at every
logged step (kilobytes; a resumed run first reads what is there), and TensorBoard's event file is
buffered and uploaded whole at each of tensorboardX's flushes (`EpathRecordWriter`, registered
for those URL schemes in place of tensorboardX's own, which need google-cloud-storage or boto3).
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


def tensorboard_writer(logdir: str) -> Any:
    """A tensorboardX `SummaryWriter` for `logdir`, local or on a bucket (see module docstring).
    The evaluation job can use it for its own events."""
    from tensorboardX import SummaryWriter, record_writer

    for scheme in REMOTE_SCHEMES:
        record_writer.register_writer_factory(scheme, _EpathRecordWriterFactory())
    # tensorboardX names the file by the second and the host: a suffix keeps a writer started
    # within the same second (a fast restart) from overwriting the previous file.
    return SummaryWriter(str(logdir), filename_suffix=f".{uuid.uuid4().hex[:8]}")


class JsonlFile:
    """Lines appended to a JSONL file: a local file is appended to; a bucket object is rewritten
    whole with every line so far (read first, so a resumed run keeps the earlier lines)."""

    def __init__(self, path: str):
        self.path, self.remote = epath.Path(path), is_remote(path)
        if self.remote:
            self.lines = self.path.read_text().splitlines() if self.path.exists() else []
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


class MetricsWriter:
    """WORKDIR/metrics.jsonl, WORKDIR/tensorboard (`train/<name>`) and the console line."""

    def __init__(self, workdir: str, total_steps: int, start_step: int = 0):
        self.total_steps, self.start_step = total_steps, start_step
        self.started = time.perf_counter()
        self.enabled = jax.process_index() == 0
        if self.enabled:
            root = epath.Path(workdir)
            root.mkdir(parents=True, exist_ok=True)
            self.jsonl = JsonlFile(os.fspath(root / "metrics.jsonl"))
            self.tensorboard = tensorboard_writer(os.fspath(root / "tensorboard"))

    def write(self, step: int, metrics: dict[str, float]) -> None:
        """Record `metrics` at `step` (needs loss, learning_rate, grad_norm, examples_per_s)."""
        if not self.enabled:
            return
        self.jsonl.write({"step": step, **metrics})
        for name, value in metrics.items():
            self.tensorboard.add_scalar(f"train/{name}", value, step)
        if step == self.start_step + 1:  # the first step includes compilation: time the rest
            self.started, self.start_step = time.perf_counter(), step
        elapsed = time.perf_counter() - self.started
        eta = elapsed / max(step - self.start_step, 1) * (self.total_steps - step)
        extras = f" mfu {metrics['mfu']:.1%}" if "mfu" in metrics else ""
        print(
            f"step {step}/{self.total_steps} loss {metrics['loss']:.4f} lr {metrics['learning_rate']:.2e} "
            f"|g| {metrics['grad_norm']:.3f} {metrics['examples_per_s']:.1f} ex/s{extras} "
            f"ETA {_duration(eta)}",
            flush=True,
        )

    def close(self) -> None:
        """Close the files (process 0)."""
        if self.enabled:
            self.jsonl.close()
            self.tensorboard.close()


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"
