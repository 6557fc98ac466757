"""Fault injection: what a run survives, and how it says so (issue 14).

One uninterrupted reference run (tiny config, 8 steps, checkpoints every 2) is shared by the
cases that compare against it. Kills are injected at exact points (a wrapper around Orbax's
commit of a step, or around the metrics line of a step) in a real `python -m ib_jax.train`
process; SIGKILL is the real signal, so nothing in the job gets to clean up. Every case asserts
the message as well as the outcome.
"""

import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from data_pipelines import demo_data, train_pipeline
from data_pipelines.preprocess import BadDataError
from ib_jax import checkpoint, validate
from ib_jax.configs_util import load_config, model_config
from ib_jax.train import data_feed, trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OVERRIDES = dict(num_steps=8, every_steps=2, keep=10)

# Runs `python -m ib_jax.train` with one fault armed by the environment (IB_JAX_TEST_FAULT at step
# IB_JAX_TEST_FAULT_STEP): kill_in_save: SIGKILL from Orbax's background thread as it commits
# the step (its arrays written, the directory not yet renamed into place); term_in_save: SIGTERM
# as soon as the step's async save has started (the write is in flight while the job goes on);
# kill_after_step: SIGKILL right after the step's metrics line is written.
RUNNER = r"""
import os, runpy, signal, sys
fault, at = os.environ["IB_JAX_TEST_FAULT"], os.environ["IB_JAX_TEST_FAULT_STEP"]
if fault == "kill_in_save":
    from orbax.checkpoint._src.path import atomicity
    finalize = atomicity.AtomicRenameTemporaryPath.finalize
    async def finalize_with_fault(self, *args, **kwargs):
        if self.get_final().name == at:
            os.kill(os.getpid(), signal.SIGKILL)
        return await finalize(self, *args, **kwargs)
    atomicity.AtomicRenameTemporaryPath.finalize = finalize_with_fault
elif fault == "term_in_save":
    from ib_jax import checkpoint
    save = checkpoint.save
    def save_with_fault(manager, step, *args, **kwargs):
        started = save(manager, step, *args, **kwargs)
        if str(step) == at:
            os.kill(os.getpid(), signal.SIGTERM)
        return started
    checkpoint.save = save_with_fault
elif fault == "kill_after_step":
    from ib_jax.train import metrics_writer
    write = metrics_writer.MetricsWriter.write
    def write_with_fault(self, step, metrics):
        write(self, step, metrics)
        if str(step) == at:
            os.kill(os.getpid(), signal.SIGKILL)
    metrics_writer.MetricsWriter.write = write_with_fault
sys.argv[0] = "ib_jax.train"
runpy.run_module("ib_jax.train", run_name="__main__", alter_sys=True)
"""


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("demo_data"))
    demo_data.ensure_from_config(_config(root).data)
    return root


def _config(data_root, **changes):
    config = load_config(os.path.join(REPO, f"configs/tiny.py:root={data_root}"))
    config.unlock()
    config.train.num_steps = OVERRIDES["num_steps"]
    config.checkpoint.every_steps = OVERRIDES["every_steps"]
    config.checkpoint.keep = OVERRIDES["keep"]
    for dotted, value in changes.items():
        section, field = dotted.split("__")
        config[section][field] = value
    return config


@pytest.fixture(scope="module")
def reference(data_root, tmp_path_factory):
    """The uninterrupted run: checkpoints 2, 4, 6, 8."""
    workdir = str(tmp_path_factory.mktemp("reference"))
    trainer.train(_config(data_root), workdir)
    return workdir


def _logged(workdir):
    """Every metrics line as (step, loss), in the order written (a resumed run repeats steps)."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [(row["step"], row["loss"]) for row in map(json.loads, f)]


def _assert_same_run(workdir, reference):
    expected = dict(_logged(reference))
    for step, loss in _logged(workdir):
        assert loss == expected[step], f"step {step}: {loss} != {expected[step]}"
    _, params, _ = checkpoint.restore_params(workdir, OVERRIDES["num_steps"])
    _, want, _ = checkpoint.restore_params(reference, OVERRIDES["num_steps"])
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, want)


def _cli(data_root, workdir, *flags, fault=None, at=0):
    """`python -m ib_jax.train` on the shared config (with a fault armed, if given)."""
    overrides = [
        f"--config.train.num_steps={OVERRIDES['num_steps']}",
        f"--config.checkpoint.every_steps={OVERRIDES['every_steps']}",
        f"--config.checkpoint.keep={OVERRIDES['keep']}",
    ]
    args = [f"--config={REPO}/configs/tiny.py:root={data_root}", f"--workdir={workdir}"]
    command = [sys.executable] + (["-c", RUNNER] if fault else ["-m", "ib_jax.train"])
    env = dict(os.environ, PYTHONPATH=REPO)
    if fault:
        env.update(IB_JAX_TEST_FAULT=fault, IB_JAX_TEST_FAULT_STEP=str(at))
    return subprocess.run(
        command + args + overrides + list(flags),
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _largest_file(directory):
    files = [os.path.join(directory, name) for name in os.listdir(directory)]
    return max(files, key=os.path.getsize)


def _damage(workdir, step, item, how):
    """Truncate the largest array data file of one item of one step, or delete its data files.

    Both act on the per-process data files and on the merged `d/` ones: which of them the OCDBT
    manifest references differs between runs and Orbax/TensorStore stacks (the merge may copy
    the arrays into `d/`, leaving the per-process files unreferenced), and damage to a file
    nobody reads harms nothing."""
    item_dir = os.path.join(workdir, "checkpoints", str(step), item)
    data_dirs = [os.path.join(item_dir, "d"), os.path.join(item_dir, "ocdbt.process_0", "d")]
    data_dirs = [d for d in data_dirs if os.path.isdir(d) and os.listdir(d)]
    assert data_dirs, f"no OCDBT data files under {item_dir}"
    for data_dir in data_dirs:
        if how == "truncate":
            os.truncate(_largest_file(data_dir), 100)
        else:
            shutil.rmtree(data_dir)
    return item_dir


# ---------------------------------------------------------------------------------------------
# Kills and preemption
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigkill_and_sigterm_at_several_points_then_resume_equals_the_uninterrupted_run(
    data_root, reference, tmp_path
):
    workdir = str(tmp_path / "run")
    checkpoints = os.path.join(workdir, "checkpoints")

    # SIGKILL while the async write of step 4 is being committed: step 2 stands, 4 is a temp dir.
    killed = _cli(data_root, workdir, fault="kill_in_save", at=4)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert checkpoint.finalized_steps(workdir) == [2]
    assert any(name.startswith("4.orbax-checkpoint-tmp") for name in os.listdir(checkpoints))

    # SIGTERM while the async save of step 4 is in flight: that save completes, the job saves
    # at the next step and exits 0 without a traceback. The killed save's temp dir is gone.
    preempted = _cli(data_root, workdir, fault="term_in_save", at=4)
    assert preempted.returncode == 0, preempted.stderr[-3000:]
    assert "SIGTERM received: saving a checkpoint and stopping" in preempted.stderr
    assert "Traceback" not in preempted.stderr
    assert not [n for n in os.listdir(checkpoints) if "orbax-checkpoint-tmp" in n]
    assert checkpoint.finalized_steps(workdir) == [2, 4, 5]
    assert not checkpoint.training_done(workdir)

    # SIGKILL between checkpoints, right after step 7 was logged.
    killed = _cli(data_root, workdir, fault="kill_after_step", at=7)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]

    finished = _cli(data_root, workdir)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "Traceback" not in finished.stderr
    assert checkpoint.training_done(workdir)
    steps = [step for step, _ in _logged(workdir)]
    assert steps == list(range(1, 9))  # once each: the killed run's row of step 7 was dropped
    _assert_same_run(workdir, reference)


# ---------------------------------------------------------------------------------------------
# Damaged checkpoints
# ---------------------------------------------------------------------------------------------


def test_truncated_and_deleted_checkpoint_files_fall_back_to_the_previous_checkpoint(
    data_root, reference, tmp_path
):
    workdir = str(tmp_path / "damaged")
    shutil.copytree(reference, workdir)
    os.remove(os.path.join(workdir, checkpoint.FINAL_MARKER))
    _damage(workdir, 8, "params", "truncate")  # as a full disk or an interrupted copy leaves it
    _damage(workdir, 6, "opt_state", "delete")

    # The eval watcher's view: the step is not readable, with a one-line cause.
    with pytest.raises(checkpoint.UnreadableCheckpointError) as raised:
        checkpoint.restore_params(workdir, 8)
    assert str(raised.value).startswith(
        f"checkpoint step 8 at {os.path.join(workdir, 'checkpoints', '8')} is unreadable: "
    )
    assert "OUT_OF_RANGE" in raised.value.cause and "\n" not in str(raised.value)

    # A new process, as a resumption is (in this one TensorStore still caches what it wrote).
    resumed = _cli(data_root, workdir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Traceback" not in resumed.stderr
    warnings = [
        line.split("ib_jax.train.resume: ", 1)[1]
        for line in resumed.stderr.splitlines()
        if "ib_jax.train.resume: " in line
    ]
    assert len(warnings) == 3, resumed.stderr[-3000:]
    step_8, step_6, resumed_at = warnings
    assert step_8.startswith(f"checkpoint step 8 at {workdir}/checkpoints/8 is unreadable: ")
    assert "OUT_OF_RANGE" in step_8 and "; moved aside to " in step_8
    assert step_6.startswith(f"checkpoint step 6 at {workdir}/checkpoints/6 is unreadable: ")
    assert "opt_state" in step_6 and "; moved aside to " in step_6
    assert resumed_at == "resumed from step 4, the newest readable checkpoint (unreadable: 8, 6)"
    moved = sorted(n for n in os.listdir(os.path.join(workdir, "checkpoints")) if "." in n)
    assert [name.split(checkpoint.UNREADABLE_TAG)[0] for name in moved] == ["6", "8"]
    assert checkpoint.finalized_steps(workdir) == [2, 4, 6, 8]  # 6 and 8 saved again
    assert checkpoint.training_done(workdir)
    _assert_same_run(workdir, reference)


def test_unreadable_checkpoint_is_a_hard_stop_on_request(data_root, reference, tmp_path):
    workdir = str(tmp_path / "strict")
    shutil.copytree(reference, workdir)
    _damage(workdir, 8, "params", "truncate")
    done = _cli(data_root, workdir, "--config.checkpoint.on_unreadable=stop")
    assert done.returncode == 5, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("train:")]
    assert len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith(
        f"train: unreadable checkpoint: checkpoint step 8 at {workdir}/checkpoints/8 is unreadable:"
    )
    assert "OUT_OF_RANGE" in lines[0] and f"traceback in {workdir}/logs/train.log" in lines[0]
    assert "Traceback" not in done.stderr  # no trace from Orbax's or TensorStore's threads
    with open(os.path.join(workdir, "logs", "train.log")) as f:
        assert "Traceback" in f.read()
    assert os.path.isdir(os.path.join(workdir, "checkpoints", "8"))  # left in place


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def test_killed_data_worker_is_named_and_workers_are_stopped(data_root):
    config = _config(data_root, data__worker_count=1)
    dataset = train_pipeline.build_train_dataset(config.data, process_index=0, process_count=1)
    feed = data_feed.DataFeed(iter(dataset), worker_count=1)
    try:
        feed.next(1)
        (worker,) = [
            p
            for p in multiprocessing.active_children()
            if p.name.startswith(data_feed.GRAIN_WORKER_PREFIX)
        ]
        os.kill(worker.pid, signal.SIGKILL)
        with pytest.raises(data_feed.DataWorkerError) as raised:
            for step in range(2, 50):
                feed.next(step)
    finally:
        feed.close()
    message = str(raised.value)
    assert message.startswith(f"data worker {worker.name} (pid {worker.pid}) was killed by SIGKILL")
    assert "while preparing the batch for step" in message and "(data.worker_count=1)" in message
    assert not [
        p
        for p in multiprocessing.active_children()
        if p.name.startswith(data_feed.GRAIN_WORKER_PREFIX)
    ]


def _one_dataset(data_root, tmp_path, name="demo_caption", **data):
    """A copy of the demo data with a config reading only `name` from it."""
    root = str(tmp_path / "data")
    shutil.copytree(data_root, root)
    config = _config(root, **{f"data__{k}": v for k, v in data.items()})
    config.data.datasets = [e for e in config.data.datasets if e["name"] == name]
    return config.data, config.data.datasets[0]


def test_truncated_annotation_file_is_refused_with_its_path(data_root, tmp_path):
    from data_pipelines.formats.common import ParseError

    data_config, entry = _one_dataset(data_root, tmp_path)
    with open(entry["ann_path"]) as f:
        text = f.read()
    with open(entry["ann_path"], "w") as f:
        f.write(text[: len(text) // 2])
    with pytest.raises(ParseError, match=f"^{entry['ann_path']}: invalid JSON at line 1"):
        train_pipeline.build_train_dataset(data_config, process_index=0, process_count=1)


def test_garbage_image_is_counted_with_its_path_then_refused_past_the_bound(
    data_root, tmp_path, caplog
):
    data_config, entry = _one_dataset(data_root, tmp_path, max_bad_fraction=0.05)
    with open(entry["ann_path"]) as f:
        image = os.path.join(entry["image_root"], json.load(f)[0]["image"])
    with open(image, "wb") as f:
        f.write(os.urandom(500))
    iterator = iter(
        train_pipeline.build_train_dataset(data_config, process_index=0, process_count=1)
    )
    epoch = 64 // data_config.global_batch_size  # every example of the split once
    caplog.set_level("WARNING", logger="data_pipelines.train_pipeline")
    for _ in range(epoch):
        next(iterator)
    assert train_pipeline.find_guard(iterator).counts["bad"] == 1
    (skipped,) = [r.getMessage() for r in caplog.records if "skipped bad example" in r.getMessage()]
    assert f"cannot read image {image!r}" in skipped

    data_config.max_bad_fraction = 0.0
    data_config.bad_fraction_min_examples = 1
    strict = iter(train_pipeline.build_train_dataset(data_config, process_index=0, process_count=1))
    with pytest.raises(
        BadDataError, match=f"more than max_bad_fraction=0.0; last: cannot read image '{image}'"
    ):
        for _ in range(epoch):
            next(strict)


# ---------------------------------------------------------------------------------------------
# Pretrained (HF) checkpoints
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_directory(tmp_path_factory):
    from tests import reference as hf_reference

    directory = str(tmp_path_factory.mktemp("hf") / "instructblip")
    hf_reference.build("t5").save_pretrained(directory)
    return directory


@pytest.mark.reference
def test_truncated_safetensors_file_names_file_and_tensor(hf_directory, tmp_path):
    import ib_jax

    directory = str(tmp_path / "truncated")
    shutil.copytree(hf_directory, directory)
    path = os.path.join(directory, "model.safetensors")
    os.truncate(path, os.path.getsize(path) - 1000)
    from ib_jax.contract import cli
    from ib_jax.convert.readers import CheckpointFileError

    with pytest.raises(
        CheckpointFileError, match=rf"^{path}: tensor \S+ \(\d+(, \d+)*\) has a bad byte range"
    ) as raised:
        ib_jax.load_pretrained(directory)
    assert cli.failure_class(raised.value) == (4, "bad pretrained checkpoint")  # input, not a bug


@pytest.mark.reference
def test_tensor_of_the_wrong_shape_names_file_and_tensor(hf_directory, tmp_path):
    from safetensors.numpy import load_file, save_file

    import ib_jax
    from ib_jax.convert.core import ConversionError

    directory = str(tmp_path / "reshaped")
    shutil.copytree(hf_directory, directory)
    path = os.path.join(directory, "model.safetensors")
    tensors = load_file(path)
    key = "qformer.embeddings.word_embeddings.weight"
    tensors[key] = tensors[key][:-3]
    save_file(tensors, path, metadata={"format": "pt"})
    with pytest.raises(ConversionError) as raised:
        ib_jax.load_pretrained(directory)
    assert f"shape mismatch for {key}: (97, 32) cannot become" in str(raised.value)
    assert f"[{path}]" in str(raised.value)


# ---------------------------------------------------------------------------------------------
# Start-up validation: every inconsistency is refused before anything compiles
# ---------------------------------------------------------------------------------------------

INCONSISTENCIES = {
    "qformer_positions": (
        dict(data__qformer_max_len=80),
        "data.qformer_max_len=80 exceeds model.qformer.max_position_embeddings=64",
    ),
    "qformer_vocab": (
        dict(model__qformer=dict(vocab_size=200)),
        "has 287 ids (counting [DEC]), more than model.qformer.vocab_size=200",
    ),
    "lm_vocab": (
        dict(model__text=dict(vocab_size=200)),
        "has 279 ids, more than model.text.vocab_size=200",
    ),
    "lm_special_ids": (
        dict(model__text=dict(eos_token_id=3)),
        "gives eos id 1, but model.text.eos_token_id=3",
    ),
    "image_patch": (
        dict(data__image_size=36),
        "data.image_size=36 is not a multiple of model.vision.patch_size=8",
    ),
    "batch_over_mesh": (
        dict(data__global_batch_size=12),
        "data.global_batch_size=12 does not split over mesh.shape data x fsdp = 8 x 1 devices",
    ),
    "batch_over_accumulation": (
        dict(train__grad_accum_steps=2),
        "data.global_batch_size=8 does not split over mesh.shape data x fsdp = 8 x 1 devices "
        "x train.grad_accum_steps=2",
    ),
    "mesh_devices": (
        dict(mesh__shape=dict(data=2, fsdp=2, tensor=4)),
        "mesh.shape={'data': 2, 'fsdp': 2, 'tensor': 4} needs 16 devices, 8 are available",
    ),
    "tokenizer_file": (
        dict(data__lm_spm="/nonexistent/spm.model"),
        "data.lm_spm: file '/nonexistent/spm.model' does not exist",
    ),
    "annotation_file": (
        dict(
            data__datasets=[dict(name="demo_vqa", ann_path="/nonexistent/a.json", image_root="/")]
        ),
        "data.datasets[0] (demo_vqa).ann_path: file '/nonexistent/a.json' does not exist",
    ),
    "lm_type": (dict(data__lm_type="llama"), "data.lm_type='llama' lays out text for another LM"),
}


@pytest.mark.parametrize("name", sorted(INCONSISTENCIES))
def test_each_inconsistency_is_one_message_naming_field_and_values(data_root, tmp_path, name):
    changes, message = INCONSISTENCIES[name]
    config = _config(data_root)
    assert validate.problems(config, workdir=str(tmp_path)) == []
    for dotted, value in changes.items():
        section, field = dotted.split("__")
        if isinstance(value, dict):
            config[section][field].update(value)
        else:
            config[section][field] = value
    found = validate.problems(config, workdir=str(tmp_path))
    assert any(message in problem for problem in found), found
    assert all("\n" not in problem for problem in found)


def test_pretrained_architecture_and_unwritable_workdir(data_root, tmp_path):
    from ib_jax.contract.model import to_config_dict

    config = _config(data_root)
    pretrained = tmp_path / "pretrained"  # a converted directory: config.json + params/
    (pretrained / "params").mkdir(parents=True)
    (pretrained / "config.json").write_text(
        json.dumps(to_config_dict(model_config(config)).to_dict())
    )
    pretrained = str(pretrained)
    config.init.pretrained = pretrained
    assert validate.problems(config, workdir=str(tmp_path)) == []
    config.model.vision.image_size = 64
    assert validate.problems(config, workdir="/proc/run") == [
        f"model.vision.image_size=64 but init.pretrained={pretrained!r} has 32",
        "--workdir='/proc/run' is not writable: No such file or directory",
    ]


def test_an_inconsistent_run_stops_before_compiling_with_one_line_per_problem(data_root, tmp_path):
    workdir = str(tmp_path / "refused")
    done = _cli(
        data_root, workdir, "--config.data.qformer_max_len=80", "--config.data.image_size=36"
    )
    assert done.returncode == 3, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert "train: invalid configuration: 2 problem(s) with the run configuration:" in done.stderr
    assert (
        "  data.qformer_max_len=80 exceeds model.qformer.max_position_embeddings=64" in done.stderr
    )
    assert "  data.image_size=36 is not a multiple of model.vision.patch_size=8" in done.stderr
    assert not os.path.exists(os.path.join(workdir, "checkpoints"))
    with open(os.path.join(workdir, "logs", "train.log")) as f:
        assert "InvalidRunError" in f.read()


def test_planner_and_data_check_refuse_the_same_inconsistencies(data_root):
    from launch import aot

    config = _config(data_root, data__qformer_max_len=80)
    message = "data.qformer_max_len=80 exceeds model.qformer.max_position_embeddings=64"
    # The planner's compile-only TPU devices need libtpu: this machine's 8 devices stand in.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(aot, "topology_devices", lambda topology: jax.devices())
        with pytest.raises(aot.PlannerError, match=message):
            aot.plan(config, "v5e-8")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "data_pipelines.check",
            f"--config={REPO}/configs/tiny.py:root={data_root}",
        ]
        + ["--config.data.qformer_max_len=80", "--sample=1"],
        env=dict(os.environ, PYTHONPATH=REPO),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stderr[-3000:]
    assert f"STOP: {message}" in done.stdout


def test_a_checkpoint_of_another_model_is_refused_not_set_aside(data_root, reference, tmp_path):
    workdir = str(tmp_path / "other_model")
    shutil.copytree(reference, workdir)
    os.remove(os.path.join(workdir, checkpoint.FINAL_MARKER))
    config = _config(data_root)
    config.model.text.d_ff = 96
    with pytest.raises(checkpoint.CheckpointMismatchError) as raised:
        trainer.train(config, workdir)
    assert str(raised.value).startswith(
        f"checkpoint step 8 at {workdir}/checkpoints/8 does not fit this run: "
        "params/language_model/decoder/layers_0/mlp/wi_0/kernel is (32, 64) there, (32, 96) in "
        "this run's model;"
    )
    assert checkpoint.finalized_steps(workdir) == [2, 4, 6, 8]  # nothing moved aside
