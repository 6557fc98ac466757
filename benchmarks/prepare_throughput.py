"""`data_pipelines.prepare` throughput, records/s: the process pool against Apache Beam's
DirectRunner (when apache_beam is installed), on generated JPEGs and on the miniature.

    python -m benchmarks.prepare_throughput --num_images=3000 --workers=2

Generated: `num_images` 640x480 JPEGs with a VQAv2-style annotation file
(benchmarks.input_pipeline.write_jpegs). Miniature: every entry of configs/rehearsal.py over
`data_pipelines.miniature` (26 datasets, a handful of records each: start-up dominates). Prints one
JSON line per (data, path): records, seconds, records_per_s.
"""

from __future__ import annotations

import importlib.util
import json
import os
import tempfile
import time

from absl import app, flags

from benchmarks.input_pipeline import write_jpegs
from data_pipelines import miniature, prepare
from ib_jax.configs_util import load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _paths(workers: int) -> dict[str, dict]:
    """{path name: prepare keyword arguments}: the pool, and Beam where it is installed."""
    paths = {f"pool x{workers}": {"num_workers": workers}}
    if importlib.util.find_spec("apache_beam") is not None:
        options = (
            f"runner=DirectRunner,direct_num_workers={workers},direct_running_mode=multi_processing"
        )
        paths[f"beam DirectRunner x{workers}"] = {"beam_pipeline_options": options}
    return paths


def _time(data: str, path: str, run, *args, **kwargs) -> None:
    """Time `run(*args, **kwargs)` (a summary or a list of them) and print one JSON line."""
    started = time.perf_counter()
    summaries = run(*args, **kwargs)
    summaries = summaries if isinstance(summaries, list) else [summaries]
    seconds = time.perf_counter() - started
    records = sum(s["num_examples"] + s.get("num_skipped", 0) for s in summaries)
    line = {"data": data, "path": path, "records": records, "seconds": round(seconds, 1)}
    print(json.dumps({**line, "records_per_s": round(records / seconds, 1)}), flush=True)


def main(argv: list[str]) -> None:
    """Writes the inputs once, then times each path on each."""
    del argv
    with tempfile.TemporaryDirectory() as root:
        ann_path = write_jpegs(os.path.join(root, "jpegs"), _NUM_IMAGES.value)
        entry = {"name": "vqav2", "ann_path": ann_path, "image_root": f"{root}/jpegs/images"}
        miniature.write_miniature(os.path.join(root, "mini"))
        data = load_config(os.path.join(REPO, f"configs/rehearsal.py:root={root}/mini")).data
        for path, kwargs in _paths(_WORKERS.value).items():
            out = tempfile.mkdtemp(dir=root)
            _time("generated", path, prepare.prepare_entry, entry, out, **kwargs)
            out = tempfile.mkdtemp(dir=root)
            _time("miniature", path, prepare.prepare_config, data, out, **kwargs)


def _define_flags() -> None:
    """CLI flags, defined only when run as a program."""
    global _NUM_IMAGES, _WORKERS
    _NUM_IMAGES = flags.DEFINE_integer("num_images", 3000, "JPEGs to generate")
    _WORKERS = flags.DEFINE_integer("workers", 2, "processes of either path")


if __name__ == "__main__":
    _define_flags()
    app.run(main)
