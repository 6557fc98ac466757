"""Data-state restore time: how long a resumed run waits for its first batch.

    python -m benchmarks.data_restore --steps=3

Writes the miniature (all 13 held-in sources of configs/data_heldin.py, data_pipelines.miniature)
into a temporary directory, builds the training pipeline of configs/rehearsal.py, takes `steps`
batches, and times restoring that iterator state into a fresh iterator up to its first batch (what
`resume.restore_latest` + the first step wait for), against a one-source mixture. Prints one JSON
line per mixture. Issue 24: 38 s for 13 sources before the read-ahead was bounded (1 s for one).
"""

from __future__ import annotations

import json
import os
import tempfile
import time

from absl import app, flags

from data_pipelines import miniature, train_pipeline
from ib_jax.configs_util import load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure(root: str, train: str | None, steps: int) -> dict:
    """Seconds from `set_state` to the first batch, for the rehearsal mixture under `root`
    (`train`: one dataset's name for a one-source mixture, None for all 13)."""
    arg = f"root={root}" + (f",train={train}" if train else "")
    data = load_config(os.path.join(REPO, f"configs/rehearsal.py:{arg}")).data
    dataset = train_pipeline.build_train_dataset(data, process_index=0, process_count=1)
    iterator = iter(dataset)
    for _ in range(steps):
        next(iterator)
    state = iterator.get_state()
    iterator.close()
    started = time.perf_counter()
    restored = iter(dataset)
    restored.set_state(state)
    next(restored)
    seconds = time.perf_counter() - started
    restored.close()
    return {
        "sources": len(data.datasets),
        "state_bytes": len(json.dumps(state, default=str)),
        "restore_to_first_batch_s": round(seconds, 2),
        "cpus": os.cpu_count(),
    }


def _define_flags() -> None:
    """CLI flags, defined only when run as a program."""
    global _STEPS
    _STEPS = flags.DEFINE_integer("steps", 3, "batches taken before the state is saved")


def main(argv: list[str]) -> None:
    """Writes the miniature once, then prints one JSON line per mixture (13 sources, 1)."""
    del argv
    with tempfile.TemporaryDirectory() as root:
        miniature.write_miniature(root)
        for train in (None, "scienceqa"):
            print(json.dumps(measure(root, train, _STEPS.value)), flush=True)


if __name__ == "__main__":
    _define_flags()
    app.run(main)
