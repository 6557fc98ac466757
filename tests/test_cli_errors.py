"""Every mistake ends in one line: the config flag's errors (a misspelt field, a missing file, a
value of the wrong type, an error in get_config), the exit status of each error class, and a
logged exception (a failing eval dataset) reaching the console as one line."""

import logging
import os
import subprocess
import sys
import tempfile
import threading

import pytest
from absl import flags

from ib_jax.contract import cli, config_flag

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _parse(*args: str):
    """Parse `--config` and its overrides as a job would; (config, deferred error or None)."""
    argv = ["job", *args]
    values = flags.FlagValues()
    holder = config_flag.define("config", "help", flag_values=values, sys_argv=argv)
    values(argv)
    try:
        config_flag.raise_deferred()
    except config_flag.ConfigFlagError as error:
        return None, str(error)
    return holder.value, None


@pytest.mark.parametrize(
    "args, expected",
    [
        (
            ["--config=configs/tiny.py", "--config.train.num_stepz=5"],
            "--config.train.num_stepz: train.num_stepz is not a config field (did you mean "
            "'num_steps'?)",
        ),
        (
            ["--config=configs/tiny.py", "--config.trian.num_steps=5"],
            "--config.trian.num_steps: trian is not a config field (did you mean 'train'?)",
        ),
        (
            ["--config=configs/tiny.py", "--config.train.num_steps=five"],
            "--config.train.num_steps=five: invalid literal for int() with base 10: 'five'",
        ),
        (["--config=configs/nope.py"], "--config=configs/nope.py: no such config file"),
        (
            ["--config=configs/nope.py", "--config.train.num_steps=5"],
            "--config=configs/nope.py: no such config file",
        ),
        (
            ["--config=configs/data_heldin.py:rooot=/x"],
            "ValueError: config argument rooot=: not an option (did you mean 'root'?)",
        ),
        (
            ["--config=configs/eval_heldout.py:datasets=gqu"],
            "KeyError: \"no published layout for dataset 'gqu'",
        ),
    ],
)
def test_a_config_mistake_is_one_line_naming_it(args, expected):
    config, error = _parse(*args)
    assert config is None and error is not None
    assert expected in error and "\n" not in error, error


def test_overrides_keep_their_types():
    config, error = _parse(
        "--config=configs/tiny.py",
        "--config.train.num_steps=5",
        "--config.train.learning_rate=3e-4",
        "--config.data.augment=false",
    )
    assert error is None
    assert config.train.num_steps == 5 and type(config.train.num_steps) is int
    assert config.train.learning_rate == pytest.approx(3e-4)
    assert config.data.augment is False


@pytest.mark.parametrize(
    "error_class",
    [
        "ib_jax.eval.loading.ModelMismatchError",
        "ib_jax.contract.config.ConfigFieldError",
        "ib_jax.contract.config_flag.ConfigFlagError",
        "ib_jax.validate.InvalidRunError",
    ],
)
def test_configuration_errors_exit_3(error_class):
    module, name = error_class.rsplit(".", 1)
    error = getattr(__import__(module, fromlist=[name]), name)("the model differs: text.d_model")
    assert cli.failure_class(error)[0] == 3


def test_a_logged_exception_is_one_console_line_and_a_logged_traceback(
    root_logging, tmp_path, capsys, monkeypatch
):
    """The eval job logs a failing dataset with logger.exception and goes on: one line."""
    monkeypatch.delenv(cli.VERBOSE_ENV, raising=False)
    cli.quiet_console()
    path = cli.log_to_file(str(tmp_path), "evaluate")
    capsys.readouterr()
    try:
        raise ValueError("gqa: 3 of 4 annotation entries are malformed")
    except ValueError:
        logging.getLogger("ib_jax.eval.job").exception("step 8 %s: evaluation failed", "gqa")
    console = capsys.readouterr().err.splitlines()
    assert len(console) == 1, console
    assert console[0].endswith(
        "ib_jax.eval.job: step 8 gqa: evaluation failed: ValueError: gqa: 3 of 4 annotation entries "
        f"are malformed (traceback in {path})"
    )
    with open(path) as f:
        logged = f.read()
    assert "Traceback (most recent call last)" in logged and "ValueError: gqa: 3 of 4" in logged


def test_a_failure_in_a_tool_without_workdir_is_one_line(
    root_logging, capsys, monkeypatch, tmp_path
):
    monkeypatch.delenv(cli.VERBOSE_ENV, raising=False)
    monkeypatch.setattr(threading, "excepthook", threading.excepthook)
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where a tool's log goes

    def main(argv):
        raise FileNotFoundError("qformer_vocab: file '/x/tokenizers/vocab.txt' does not exist")

    with pytest.raises(SystemExit) as exited:
        cli.guarded("check", main)(["check"])
    assert exited.value.code == 4
    console = capsys.readouterr().err.splitlines()
    assert console == [
        "check: missing file: qformer_vocab: file '/x/tokenizers/vocab.txt' does not exist "
        f"(exit status 4; traceback in {tmp_path}/ib_jax_logs/check.log)"
    ]


def _run(*args: str, cwd: str = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_a_misspelt_field_ends_the_job_in_one_line_with_exit_3(tmp_path):
    done = _run(
        "ib_jax.train",
        "--config=configs/tiny.py",
        "--config.train.num_stepz=5",
        f"--workdir={tmp_path}",
    )
    assert done.returncode == 3, done.stderr[-3000:]
    assert done.stderr.splitlines() == [
        "train: invalid configuration: --config.train.num_stepz: train.num_stepz is not a config "
        "field (did you mean 'num_steps'?); known fields of train: "
        + done.stderr.split("known fields of train: ")[1].split(" (exit")[0]
        + f" (exit status 3; traceback in {tmp_path}/logs/train.log)"
    ]
    assert not os.path.exists(tmp_path / "checkpoints")


@pytest.mark.parametrize(
    "tool, args",
    [
        ("data_pipelines.preview", []),
        ("data_pipelines.prepare", ["--out=OUT"]),
        ("data_pipelines.check", ["--config.data.nonsense=1"]),
    ],
)
def test_the_data_tools_end_in_one_line(tmp_path, tool, args):
    """A data tool on a root without the datasets: one line naming the file, no traceback."""
    args = [a.replace("OUT", str(tmp_path / "out")) for a in args]
    done = _run(tool, f"--config=configs/instructblip_flant5xl.py:root={tmp_path}", *args)
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    if "--config.data.nonsense=1" in args:
        assert done.returncode == 3 and "data.nonsense is not a config field" in lines[0]
    else:
        assert done.returncode == 4 and lines[0].startswith(f"{tool.split('.')[-1]}: missing file")
        assert str(tmp_path) in lines[0]


def test_the_planner_ends_a_misspelt_field_in_one_line():
    done = _run(
        "launch.aot", "--config=configs/tiny.py", "--config.train.num_stepz=3", "--topology=v5p-8"
    )
    assert done.returncode == 3, done.stderr[-3000:]
    (line,) = done.stderr.splitlines()
    assert line.startswith("aot: invalid configuration: --config.train.num_stepz: train.num_stepz")
