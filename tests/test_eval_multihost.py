"""The eval job across hosts: 2 processes x 4 CPU devices against 1 process x 8 devices.

A 2-process training run (configs/tiny.py, 2 steps) evaluates its final checkpoint itself
(`config.eval.after_training`), every process on its shard of each eval set; a 2-process
`python -m ib_jax.evaluate` evaluates the same checkpoint again. Both must write the same
predictions files (every example once, in the dataset's order) and metrics as this process
evaluating that checkpoint alone on its 8 devices, on the same (data 2, fsdp 2, tensor 2) mesh.
"""

import concurrent.futures
import json
import os
import shutil

import jax
import ml_collections
import pytest

from data_pipelines import demo_data, eval_pipeline, sources
from ib_jax.eval import job as evaluate
from ib_jax.eval.outputs import Outputs
from launch import local
from tests import test_eval_sharded

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILE = """
from tests.test_eval_multihost import run_config


def get_config(arg):
    return run_config(arg)
"""


def run_config(root: str) -> ml_collections.ConfigDict:
    """Tiny T5, beam/greedy/ranking datasets, 2 training steps, evaluation after training."""
    config = test_eval_sharded.tiny_config(root)
    config.mesh.shape = dict(data=-1, fsdp=2, tensor=2)
    config.train.num_steps, config.checkpoint.every_steps = 2, 2
    config.eval.after_training = True
    return config


def _launch(args: list[str], workdir: str) -> None:
    local.launch(
        args,
        num_processes=2,
        devices_per_process=4,
        timeout_s=900,
        log_dir=os.path.join(workdir, "process_logs"),
    )


def _outputs(workdir: str, tag: str) -> tuple[dict, dict]:
    """({dataset: predictions file text}, {dataset: metrics line without its time})."""
    files, metrics = {}, {}
    for dataset in test_eval_sharded.DATASETS:
        path = os.path.join(workdir, "eval", "predictions", dataset, f"{tag}.jsonl")
        with open(path) as f:
            files[dataset] = f.read()
    with open(os.path.join(workdir, "eval", "metrics.jsonl")) as f:
        for line in map(json.loads, f):
            line.pop("time")
            metrics[line["dataset"]] = line
    return files, metrics


@pytest.mark.slow  # several processes compile apart: minutes on 2 cores
def test_two_processes_evaluate_like_one(tmp_path):
    root = str(tmp_path / "demo_data")
    config = run_config(root)
    demo_data.ensure_from_config(config.data)  # once, before the processes (they would race on it)
    config_file = tmp_path / "eval_config.py"
    config_file.write_text(CONFIG_FILE)
    trained = str(tmp_path / "trained")
    _launch(
        ["-m", "ib_jax.train", f"--config={config_file}:{root}", f"--workdir={trained}"], trained
    )
    assert jax.process_count() == 1 and jax.device_count() == 8

    # The same checkpoint: by a 2-process evaluation job, and by this process alone.
    standalone = str(tmp_path / "standalone")
    shutil.copytree(os.path.join(trained, "checkpoints"), os.path.join(standalone, "checkpoints"))
    args = ["-m", "ib_jax.evaluate", f"--config={config_file}:{root}", f"--workdir={standalone}"]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        two_process = pool.submit(_launch, [*args, "--checkpoint=2"], standalone)
        alone = str(tmp_path / "alone")
        results = evaluate.run(config, trained, "2", outputs=Outputs(alone))
        two_process.result()

    files, metrics = _outputs(alone, "step_2")
    for dataset in test_eval_sharded.DATASETS:
        entry = eval_pipeline.find_eval_entry(config.data, dataset, "eval")
        ids = [str(r["id"]) for r in sources.load_records(entry)]
        rows = [json.loads(line) for line in files[dataset].splitlines()]
        assert [str(r["id"]) for r in rows] == ids  # every example once, in the dataset's order
        assert metrics[dataset]["num_scored"] == len(ids) and "error" not in results[dataset]
    for workdir in (trained, standalone):
        other_files, other_metrics = _outputs(workdir, "step_2")
        assert other_files == files, workdir
        assert other_metrics == metrics, workdir
