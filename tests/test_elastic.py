"""Elastic resume (issue 24): a run stopped on N processes resumes on M with the losses of an
uninterrupted run, because the data order is global (data_pipelines/global_order).

Four `launch.local` runs of the tiny config (its four demo datasets mixed by weight), 4 CPU
devices in all: the uninterrupted 1 x 4 run to step 8 (checkpoints every 2); 2 x 2 stopped at 4
and resumed on 1 x 4 to 8; the 1 x 4 run's step-4 checkpoint resumed on 2 x 2 to 8. Both resumed
runs' losses equal the uninterrupted run's (rtol 1e-5: the same global batches, the reductions
split over another number of processes). The in-process checks below need no launch.
"""

import json
import os
import shutil

import numpy as np
import pytest

from data_pipelines import demo_data, global_order, train_pipeline
from ib_jax.configs_util import load_config
from launch import local

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_STEPS, STOP = 8, 4


def _config(root):
    return load_config(os.path.join(REPO, f"configs/tiny.py:root={root}"))


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("demo"))
    demo_data.ensure_from_config(_config(root).data)  # before the processes (they would race)
    return root


def _batches(data, index, count, num, state=None):
    dataset = train_pipeline.build_train_dataset(data, process_index=index, process_count=count)
    iterator = iter(dataset)
    if state is not None:
        iterator.set_state(state)
    return [next(iterator) for _ in range(num)], iterator


def test_the_global_batch_is_the_same_for_any_process_count(demo_root):
    data = _config(demo_root).data
    assert len(data.datasets) > 1  # a weighted mixture
    one, iterator = _batches(data, 0, 1, 3)
    for count in (2, 4):
        parts = [_batches(data, index, count, 3)[0] for index in range(count)]
        for step in range(3):
            for key, value in one[step].items():
                glued = np.concatenate([part[step][key] for part in parts])
                np.testing.assert_array_equal(glued, value, err_msg=f"{count} processes, {key}")
    # The state of one process restores on two: each continues with its block of batch 4.
    state = json.loads(json.dumps(iterator.get_state()))  # as the checkpoint stores it
    (fourth,), _ = _batches(data, 0, 1, 1, state)
    halves = [_batches(data, index, 2, 1, state)[0][0] for index in range(2)]
    for key, value in fourth.items():
        np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), value)


def test_a_state_of_another_data_order_or_format_is_refused(demo_root):
    data = _config(demo_root).data
    _, iterator = _batches(data, 0, 1, 1)
    state = iterator.get_state()
    data.unlock()
    data.seed = 1
    _, other = _batches(data, 0, 1, 0)
    assert other.mismatch(state) == "the data order changed since it was saved: seed 0 differ"
    data.datasets = data.datasets[:2]
    _, fewer = _batches(data, 0, 1, 0)
    assert "datasets ['demo_caption', 'demo_mc', 'demo_qg', 'demo_vqa'] (size, " in fewer.mismatch(
        state
    )
    with pytest.raises(ValueError, match="per process"):
        fewer.set_state({"parent": {}, "seen": 0, "bad": 0, "per_dataset": {}})
    assert global_order.FORMAT == state["format"]


def _train(root, workdir, processes, *flags):
    local.launch(
        [
            "-m",
            "ib_jax.train",
            f"--config={REPO}/configs/tiny.py:root={root}",
            f"--workdir={workdir}",
            f"--config.train.num_steps={NUM_STEPS}",
            "--config.checkpoint.every_steps=2",
            "--config.checkpoint.keep=10",
            *flags,
        ],
        num_processes=processes,
        devices_per_process=4 // processes,
        timeout_s=900,
        log_dir=os.path.join(workdir, "logs", f"{processes}x{4 // processes}"),
    )
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    steps = [row["step"] for row in rows]
    assert steps == sorted(set(steps)), steps  # each step once, also after a resume
    return {row["step"]: row["loss"] for row in rows}


def _assert_same_losses(losses, reference, what):
    assert sorted(losses) == sorted(reference), what
    for step, loss in reference.items():
        np.testing.assert_allclose(losses[step], loss, rtol=1e-5, err_msg=f"{what}, step {step}")


@pytest.mark.slow  # four multi-process runs: minutes on 2 cores
def test_resume_on_another_process_count_equals_the_uninterrupted_run(demo_root, tmp_path):
    reference_dir = str(tmp_path / "reference_1x4")
    reference = _train(demo_root, reference_dir, 1)

    # 2 x 2 stopped at step 4, resumed on 1 x 4.
    shrunk = str(tmp_path / "2x2_then_1x4")
    _train(demo_root, shrunk, 2, f"--config.train.stop_after_steps={STOP}")
    _assert_same_losses(_train(demo_root, shrunk, 1), reference, "2x2 -> 1x4")

    # The 1 x 4 run's checkpoint of step 4 (as if stopped there), resumed on 2 x 2.
    grown = str(tmp_path / "1x4_then_2x2")
    os.makedirs(os.path.join(grown, "checkpoints"))
    shutil.copytree(
        os.path.join(reference_dir, "checkpoints", str(STOP)),
        os.path.join(grown, "checkpoints", str(STOP)),
    )
    with open(os.path.join(grown, "metrics.jsonl"), "w") as f:
        f.writelines(
            json.dumps({"step": s, "loss": reference[s]}) + "\n" for s in range(1, STOP + 1)
        )
    _assert_same_losses(_train(demo_root, grown, 2), reference, "1x4 -> 2x2")


# Sends `IB_JAX_TEST_SIGNAL` to process `IB_JAX_TEST_SIGNAL_PROCESS` itself as it asks for the
# batch of step 3, then runs the training job.
SIGNAL_RUNNER = r"""
import os, runpy, signal, sys
if os.environ["IB_JAX_PROCESS_ID"] == os.environ["IB_JAX_TEST_SIGNAL_PROCESS"]:
    from ib_jax.train import data_feed
    next_batch = data_feed.DataFeed.next
    def next_with_signal(self, step):
        if step == 3:
            os.kill(os.getpid(), getattr(signal, os.environ["IB_JAX_TEST_SIGNAL"]))
        return next_batch(self, step)
    data_feed.DataFeed.next = next_with_signal
sys.argv[0] = "ib_jax.train"
runpy.run_module("ib_jax.train", run_name="__main__", alter_sys=True)
"""


@pytest.mark.slow  # one 2-process run
def test_sigint_on_one_process_saves_the_same_step_on_every_process_and_exits_0(
    demo_root, tmp_path
):
    workdir = str(tmp_path / "run")
    results = local.launch(
        [
            "-c",
            SIGNAL_RUNNER,
            f"--config={REPO}/configs/tiny.py:root={demo_root}",
            f"--workdir={workdir}",
            "--config.train.num_steps=40",
            "--config.checkpoint.every_steps=1000",
        ],
        num_processes=2,
        devices_per_process=2,
        timeout_s=900,
        env=dict(os.environ, IB_JAX_TEST_SIGNAL="SIGINT", IB_JAX_TEST_SIGNAL_PROCESS="0"),
        log_dir=os.path.join(workdir, "logs"),
    )
    assert [r.returncode for r in results] == [0, 0]
    (saved,) = os.listdir(os.path.join(workdir, "checkpoints"))
    assert 3 <= int(saved) < 40  # the step the processes agreed on, not the last one
    assert "SIGINT received: passed on to JAX's preemption notifier" in results[0].log()
    for result in results:
        assert f"preemption notice: every process saves at step {saved} and stops" in result.log()
        assert "Traceback" not in result.log()
