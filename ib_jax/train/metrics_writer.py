"""Training metrics: metrics.jsonl + TensorBoard events (tensorboardX, no TensorFlow) + a console
progress line with rate and ETA. Only process 0 writes."""

from __future__ import annotations

import json
import os
import time

import jax


class MetricsWriter:
    """WORKDIR/metrics.jsonl, WORKDIR/tensorboard (`train/<name>`) and the console line."""

    def __init__(self, workdir: str, total_steps: int, start_step: int = 0):
        self.total_steps, self.start_step = total_steps, start_step
        self.started = time.perf_counter()
        self.enabled = jax.process_index() == 0
        if self.enabled:
            from tensorboardX import SummaryWriter

            os.makedirs(workdir, exist_ok=True)
            self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
            self.tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, metrics: dict[str, float]) -> None:
        """Record `metrics` at `step` (needs loss, learning_rate, grad_norm, examples_per_s)."""
        if not self.enabled:
            return
        self.jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
        self.jsonl.flush()
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
