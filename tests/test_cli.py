"""ib_jax/contract/cli.py: the shared flags of the entry points (`--help` lists them) and the quiet console."""

import logging
import os
import subprocess
import sys
import threading

import pytest
from absl import logging as absl_logging

from ib_jax.contract import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize(
    "module, flag_names",
    [
        ("ib_jax.train", ["--config", "--workdir"]),
        ("ib_jax.evaluate", ["--config", "--workdir", "--checkpoint", "--watch"]),
        ("launch.aot", ["--config", "--topology", "--mesh", "--table"]),
        ("launch.local", ["--num_processes", "--devices_per_process", "--log_dir"]),
        ("launch.tpu_pod", ["--name", "--config", "--workdir", "--dry_run"]),
    ],
)
def test_help_lists_the_entry_points_flags(module, flag_names):
    done = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    # absl's --help exits with status 1 after printing the usage; the text is what counts.
    assert "Try --helpfull" in done.stdout, done.stderr[-2000:]
    listed = {line.split(":")[0].strip() for line in done.stdout.splitlines()}
    for name in flag_names:
        assert name in listed or f"--[no]{name[2:]}" in listed, (name, done.stdout)
    if module != "launch.tpu_pod":  # its --config is a path for the workers, not loaded here
        config_help = cli.CONFIG_HELP.split(",")[0]
        assert ("--config" in flag_names) == (config_help in done.stdout)


def test_a_mistyped_override_fails_before_any_work(tmp_path):
    """A mistyped override fails at parse time with the field's name, before any work starts."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ib_jax.train",
            "--config=configs/tiny.py",
            f"--workdir={tmp_path}",
            "--config.train.num_stepz=3",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0 and "num_stepz" in done.stderr, done.stderr[-2000:]
    assert not os.path.exists(tmp_path / "checkpoints")


def test_quiet_console_keeps_the_jobs_lines_and_files_the_rest(
    root_logging, tmp_path, capsys, monkeypatch
):
    monkeypatch.delenv(cli.VERBOSE_ENV, raising=False)
    cli.quiet_console()
    # Before the file is named (as before jax.distributed.initialize): held, then written.
    absl_logging.info("orbax: Created BasePyTreeCheckpointHandler")
    logging.getLogger("ib_jax.train.trainer").info("train step compiled")
    path = cli.log_to_file(str(tmp_path), "train", process_index=1, process_count=2)
    logging.getLogger("jax._src.xla_bridge").info("Unable to initialize backend 'tpu'")
    absl_logging.warning("CheckpointManagerOptions.read_only=True")
    logging.getLogger("jax._src.xla_bridge").warning("falling back to cpu")
    logging.getLogger("data_pipelines.train_pipeline").info("dataset demo_vqa: 1800 examples")
    for handler in logging.getLogger().handlers:
        handler.flush()

    console = capsys.readouterr().err
    assert "train step compiled" in console and "dataset demo_vqa" in console
    assert "falling back to cpu" in console  # other libraries' warnings stay visible
    for library_line in ("BasePyTreeCheckpointHandler", "backend 'tpu'", "read_only=True"):
        assert library_line not in console
    assert path == os.path.join(str(tmp_path), "logs", "train.process_1.log")
    with open(path) as f:
        logged = f.read()
    for line in ("BasePyTreeCheckpointHandler", "train step compiled", "backend 'tpu'"):
        assert line in logged
    assert logged.index("BasePyTreeCheckpointHandler") < logged.index("backend 'tpu'")


def test_verbose_env_leaves_the_console_alone(root_logging, monkeypatch):
    monkeypatch.setenv(cli.VERBOSE_ENV, "1")
    before = list(logging.getLogger().handlers)
    cli.quiet_console()
    assert logging.getLogger().handlers == before


def test_bucket_workdirs_log_locally():
    path = cli.log_file_path("gs://bucket/run", "evaluate")
    assert "://" not in path and path.endswith(os.path.join("ib_jax_logs", "evaluate.log"))


def _errors():
    """One error of each failure class, with the exit status and the console line it gets."""
    from data_pipelines.preprocess import BadDataError
    from ib_jax.checkpoint import UnreadableCheckpointError
    from ib_jax.train.data_feed import DataWorkerError
    from ib_jax.train.trainer import NonFiniteLossError
    from ib_jax.validate import InvalidRunError

    unreadable = UnreadableCheckpointError(8, "/w/checkpoints/8", "ValueError: OUT_OF_RANGE: x")
    return [
        (
            InvalidRunError(["a=1 exceeds b=0", "c=2 is not d=3"]),
            3,
            "invalid configuration: "
            "2 problem(s) with the run configuration:\n  a=1 exceeds b=0\n  c=2 is not d=3",
        ),
        (BadDataError("3 of 10 examples were bad"), 4, "bad input data: 3 of 10 examples were bad"),
        (
            FileNotFoundError("annotation file 'x.json' does not exist"),
            4,
            "missing file: annotation file 'x.json' does not exist",
        ),
        (unreadable, 5, f"unreadable checkpoint: {unreadable}"),
        (DataWorkerError("data worker died"), 6, "data worker died: data worker died"),
        (
            NonFiniteLossError("non-finite loss nan at step 3"),
            7,
            "training diverged: non-finite loss nan at step 3",
        ),
        (
            RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 1.2G\nmore"),
            8,
            "out of memory: RESOURCE_EXHAUSTED: Out of memory allocating 1.2G",
        ),
        (KeyError("params"), 1, "unexpected error: KeyError: 'params'"),
    ]


@pytest.mark.parametrize("index", range(8))
def test_a_failing_job_prints_one_line_logs_the_traceback_and_exits_by_class(
    index, root_logging, tmp_path, capsys, monkeypatch
):
    error, status, line = _errors()[index]
    monkeypatch.delenv(cli.VERBOSE_ENV, raising=False)
    monkeypatch.setattr(threading, "excepthook", threading.excepthook)
    cli.quiet_console()
    path = cli.log_to_file(str(tmp_path), "train")
    capsys.readouterr()  # the "library logs: PATH" line

    def main(argv):
        raise error

    with pytest.raises(SystemExit) as exited:
        cli.guarded("train", main)(["train"])
    assert exited.value.code == status
    console = capsys.readouterr().err
    first, *rest = line.split("\n")
    expected = [f"train: {first} (exit status {status}; traceback in {path})", *rest]
    assert console == "\n".join(expected) + "\n"
    with open(path) as f:
        logged = f.read()
    assert "Traceback (most recent call last)" in logged and type(error).__name__ in logged


def test_background_thread_errors_go_to_the_log(root_logging, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(cli.VERBOSE_ENV, raising=False)
    monkeypatch.setattr(threading, "excepthook", threading.excepthook)
    cli.quiet_console()
    path = cli.log_to_file(str(tmp_path), "train")
    cli.guarded("train", lambda argv: None)(["train"])  # installs the thread hook

    def fail():
        raise OSError("disk full while writing checkpoints/8")

    thread = threading.Thread(target=fail, name="async_save")
    thread.start()
    thread.join()
    for handler in logging.getLogger().handlers:
        handler.flush()
    console = capsys.readouterr().err
    assert "Traceback" not in console
    assert "background thread async_save failed: OSError: disk full" in console
    with open(path) as f:
        assert "Traceback (most recent call last)" in f.read()
