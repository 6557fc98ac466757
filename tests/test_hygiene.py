"""Run hygiene (issue 24): a finished run rerun stops at once, a resumed run's metrics hold each
step once, the console ETA is right when every step is logged, and restoring the data state of a
13-source mixture prepares a few batches' worth of examples, not thousands."""

import json
import logging
import os
import signal

import pytest

from data_pipelines import demo_data, miniature, preprocess, train_pipeline
from ib_jax import checkpoint
from ib_jax.configs_util import load_config
from ib_jax.train import metrics_writer, preemption, trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _metrics(loss, step_time_s=None):
    row = dict(loss=loss, learning_rate=1e-3, grad_norm=1.0, examples_per_s=10.0)
    return row if step_time_s is None else {**row, "step_time_s": step_time_s}


def _rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [(row["step"], row["loss"]) for row in map(json.loads, f)]


def test_resumed_writer_drops_the_rows_past_the_resumed_step(tmp_path):
    workdir = str(tmp_path)
    writer = metrics_writer.MetricsWriter(workdir, total_steps=6)
    for step in range(1, 6):
        writer.write(step, _metrics(float(step)))
    writer.close()
    with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
        f.write('{"step": 6, "lo')  # a line torn by a kill
    # Resumed from the checkpoint of step 3: steps 4 and 5 are trained again.
    writer = metrics_writer.MetricsWriter(workdir, total_steps=6, start_step=3)
    writer.write(4, _metrics(40.0))
    writer.close()
    assert _rows(workdir) == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0)]
    assert metrics_writer.last_metrics(workdir) == _metrics(40.0)


def test_eta_counts_every_step_when_every_step_is_logged(monkeypatch, capsys, tmp_path):
    clock = iter([100.0, 102.0, 104.0, 106.0])  # one logged step every 2 s
    fake_time = type("Clock", (), {"perf_counter": staticmethod(lambda: next(clock))})
    monkeypatch.setattr(metrics_writer, "time", fake_time)  # the writer's clock only
    writer = metrics_writer.MetricsWriter(str(tmp_path), total_steps=64)
    for step in range(1, 5):
        writer.write(step, _metrics(1.0, step_time_s=3.0))
    writer.close()
    etas = [line.rsplit("ETA ", 1)[1] for line in capsys.readouterr().out.splitlines()]
    # First line: the trainer's step time (3 s x 63 left); then 2 s per step measured.
    assert etas == ["3m09s", "2m04s", "2m02s", "2m00s"]


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("demo"))
    demo_data.ensure_from_config(_tiny(root, 1).data)
    return root


def _tiny(root, num_steps):
    config = load_config(os.path.join(REPO, f"configs/tiny.py:root={root}"))
    config.unlock()
    config.train.num_steps = num_steps
    return config


def test_a_finished_run_rerun_stops_before_compiling(demo_root, tmp_path, monkeypatch, caplog):
    workdir = str(tmp_path / "run")
    first = trainer.train(_tiny(demo_root, 1), workdir)
    assert checkpoint.finalized_steps(workdir) == [1]
    os.remove(os.path.join(workdir, checkpoint.FINAL_MARKER))  # as if lost: written again

    def refuse(*args, **kwargs):
        raise AssertionError("the finished run was compiled again")

    # The checkpoint is restored (a damaged one is found and set aside as usual), not trained.
    monkeypatch.setattr(trainer.preemption_lib, "Preemption", refuse)  # made after the compile
    with caplog.at_level(logging.INFO, logger=trainer.__name__):
        again = trainer.train(_tiny(demo_root, 1), workdir)
    assert "already at step 1 of 1" in caplog.text
    assert "train step compiled" not in caplog.text
    assert again == first  # the last logged metrics, read back from metrics.jsonl
    assert checkpoint.training_done(workdir)


def test_restoring_a_13_source_data_state_prepares_few_examples(tmp_path, monkeypatch):
    root = str(tmp_path / "mini")
    miniature.write_miniature(root)
    config = load_config(os.path.join(REPO, f"configs/rehearsal.py:root={root}"))
    assert len(config.data.datasets) == 13
    dataset = train_pipeline.build_train_dataset(config.data, process_index=0, process_count=1)
    iterator = iter(dataset)
    for _ in range(3):
        next(iterator)
    state = iterator.get_state()

    prepared = []
    call = preprocess.ExamplePreprocessor.__call__
    monkeypatch.setattr(
        preprocess.ExamplePreprocessor,
        "__call__",
        lambda self, index, record: prepared.append(index) or call(self, index, record),
    )
    restored = iter(dataset)
    restored.set_state(state)
    next(restored)
    batch = int(config.data.global_batch_size)
    # Grain's default read-ahead prepared 500 examples per source (6,500) before the first batch.
    assert batch <= len(prepared) <= 40 * batch, len(prepared)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_ask_one_process_to_save_and_stop(signum):
    previous = signal.getsignal(signum)
    handler = preemption.Preemption()
    assert not handler.coordinated  # no jax.distributed client in this process
    assert not handler.reached(1)
    os.kill(os.getpid(), signum)
    assert handler.reached(2)
    handler.restore()
    assert signal.getsignal(signum) is previous
