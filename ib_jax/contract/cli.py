"""What every command-line entry point shares: the config and workdir flags, and a quiet console.

It lives in the contract layer because both sides' entry points use it (`ib_jax.train`,
`ib_jax.evaluate`, and the data tools `data_pipelines.check`, `preview`, `prepare`, `miniature`);
it imports nothing else of the project.

Flags: `--config=configs/x.py[:arg]` is an `ml_collections` config file (its `get_config(arg)`),
fields overridden as `--config.train.num_steps=10`; `--workdir=DIR` is where a job reads and
writes. A mistake in either (no such file, a misspelt field, a value of the wrong type, an error in
`get_config`) ends in one line naming it, exit status 3 (`ib_jax.contract.config_flag`). The
config is locked (`lock_config=True`) in every entry point: an override may change a field but
not add one, and a driver that tried to add a key would fail instead of passing settings around
by side effect. It also has to be: `ib_jax.train` hands its config to `ib_jax.evaluate`
(`eval.after_training`), so evaluation must work on a locked config anyway.

Console: libraries log a lot at INFO (Orbax writes dozens of lines per checkpoint, jax reports
every backend it probes). `quiet_console` keeps the job's own lines (loggers `ib_jax.*`,
`data_pipelines.*`, `launch.*`, and `print`ed progress) and warnings on the console, and
`log_to_file` sends everything to `WORKDIR/logs/<job>.log`. `--verbosity=N` on the command line or
`IB_JAX_VERBOSE=1` keeps absl's console handler, which prints everything.

Failures: `guarded(job, main)` wraps an entry point's `main` so that an error ends the job with
one line on the console (what failed and why, naming the path or field the error names), the full
traceback in the job's log file, and an exit status per class of failure (`EXIT_STATUS`):

    1  unexpected error (a bug: the traceback in the log says where)
    3  the configuration cannot run (ib_jax.validate: one line per problem; a misspelt field),
       or does not fit the checkpoint it would resume from or evaluate
    4  bad or missing input (a data/tokenizer/checkpoint file, too many bad examples)
    5  unreadable checkpoint (and config.checkpoint.on_unreadable=stop)
    6  a data worker process died
    7  training diverged (non-finite loss)
    8  out of memory
    130 interrupted (Ctrl-C); a SIGTERM'd training job saves and exits 0
"""

from __future__ import annotations

import functools
import logging
import logging.handlers
import os
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable
from typing import Any

import ml_collections
from absl import flags
from ml_collections import config_flags

from ib_jax.contract import config_flag

VERBOSE_ENV = "IB_JAX_VERBOSE"
# Loggers whose INFO lines are the job's own progress and results.
OWN_LOGGERS = ("ib_jax", "data_pipelines", "launch", "configs", "__main__")
CONFIG_HELP = (
    "configs/*.py file (get_config(arg)), optionally `path.py:arg`; "
    "override fields with --config.section.field=value"
)

logger = logging.getLogger(__name__)


def define_config_flag(required: bool = True) -> flags.FlagHolder[ml_collections.ConfigDict]:
    """`--config`: a locked ConfigDict from a config file (see the module docstring for why).

    The calling entry point should `flags.adopt_module_key_flags(cli)` so `--help` lists it.
    """
    holder = config_flag.define("config", CONFIG_HELP)
    if required:
        flags.mark_flag_as_required("config")
    return holder


def define_workdir_flag(help_string: str) -> flags.FlagHolder[str]:
    """`--workdir` (required): the run directory a job reads and writes."""
    holder = flags.DEFINE_string("workdir", None, help_string)
    flags.mark_flag_as_required("workdir")
    return holder


def list_in_help(*names: str) -> None:
    """Make flags `names` key flags of the program that runs (its `--help` lists them), also
    when a module defines them for another one (`python -m ib_jax.evaluate` runs ib_jax.eval's
    command line)."""
    for name in names:
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[name])


def config_path(holder: flags.FlagHolder) -> str:
    """The `--config` value as given (`path.py` or `path.py:arg`), after flag parsing."""
    return config_flags.get_config_filename(flags.FLAGS[holder.name])


# ---------------------------------------------------------------------------------------------
# Logging
# ---------------------------------------------------------------------------------------------


class _ConsoleFilter(logging.Filter):
    """The job's own records at INFO and up; other libraries' at WARNING and up.

    Libraries that log through absl (logger "absl": Orbax, Grain) also warn about routine choices
    (every read-only checkpoint manager says so three times), so only their errors reach the
    console; their warnings are in the log file with everything else.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Whether the record goes to the console."""
        if getattr(record, "file_only", False):  # tracebacks: the console gets one line
            return False
        if record.name.split(".")[0] in OWN_LOGGERS:
            return record.levelno >= logging.INFO
        if record.name == "absl":
            return record.levelno >= logging.ERROR
        if record.name == "asyncio" and "exception was never retrieved" in record.getMessage():
            # The other reads of an Orbax restore that failed (see `_unraisable`).
            return False
        return record.levelno >= logging.WARNING


class _OneLineFormatter(logging.Formatter):
    """A record's own line; an exception it carries (`logger.exception`) as one line naming it
    and the log file, never the traceback, which the log file has."""

    def format(self, record: logging.LogRecord) -> str:
        """The record's line, with the exception described in one line."""
        if not (record.exc_info or record.exc_text or record.stack_info):
            return super().format(record)
        error = record.exc_info[1] if record.exc_info else None
        # A copy: the other handlers (the log file) still format the traceback.
        record = logging.makeLogRecord(record.__dict__)
        record.exc_info = record.exc_text = record.stack_info = None
        line = super().format(record)
        if error is not None:
            line += f": {describe(error)}"
        return line + (f" (traceback in {_log_path})" if _log_path else "")


def verbose_requested() -> bool:
    """`--verbosity` given on the command line, or `IB_JAX_VERBOSE` set to a non-empty value."""
    verbosity_given = flags.FLAGS.is_parsed() and flags.FLAGS["verbosity"].present
    return bool(verbosity_given or os.environ.get(VERBOSE_ENV))


# The records logged before the log file can be named (before `jax.distributed.initialize`,
# which decides the process index), held until `log_to_file` writes them.
_pending: logging.handlers.MemoryHandler | None = None
# Where `log_to_file` writes (named in the one-line failure message).
_log_path: str | None = None


def quiet_console() -> None:
    """Replace absl's console handler by one that shows only the job's lines (module docstring).

    Call first thing in `main`; records meant for the log file are held until `log_to_file`.
    Does nothing when `verbose_requested()`.
    """
    global _pending
    if verbose_requested() or _pending is not None:
        return
    root = logging.getLogger()
    for handler in list(root.handlers):
        # absl's handler (installed by app.run) and any other stream on the terminal.
        if type(handler).__name__ == "ABSLHandler" or (
            isinstance(handler, logging.StreamHandler)
            and getattr(handler, "stream", None) in (sys.stderr, sys.stdout)
        ):
            root.removeHandler(handler)
    console = logging.StreamHandler(sys.stderr)
    console.addFilter(_ConsoleFilter())
    console.setFormatter(_OneLineFormatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
    root.addHandler(console)
    root.setLevel(logging.INFO)
    # flushLevel above CRITICAL: nothing leaves the buffer before log_to_file gives it a target.
    _pending = logging.handlers.MemoryHandler(capacity=100_000, flushLevel=logging.CRITICAL + 1)
    root.addHandler(_pending)


def current_log_path() -> str | None:
    """Where `log_to_file` writes this process's log, once it was called."""
    return _log_path


def log_file_path(
    workdir: str | None, job: str, process_index: int = 0, process_count: int = 1
) -> str:
    """`WORKDIR/logs/<job>.log` (`<job>.process_<i>.log` with several processes).

    A bucket workdir (gs://...) cannot be appended to line by line, and a tool without a workdir
    (the data tools) has none: their logs go to the local temporary directory instead.
    """
    name = job if process_count == 1 else f"{job}.process_{process_index}"
    directory = (
        os.path.join(tempfile.gettempdir(), "ib_jax_logs")
        if workdir is None or "://" in workdir
        else os.path.join(workdir, "logs")
    )
    return os.path.join(directory, f"{name}.log")


def log_to_file(
    workdir: str | None,
    job: str,
    process_index: int = 0,
    process_count: int = 1,
    announce: bool = True,
) -> str:
    """Write every record (and those held since `quiet_console`) to `log_file_path(...)`.

    Returns the path; `announce` says where on the console. Call once the process index is
    known (after `distributed.initialize`).
    """
    global _pending, _log_path
    path = log_file_path(workdir, job, process_index, process_count)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(
        logging.Formatter(
            "%(levelname).1s%(asctime)s %(process)d %(filename)s:%(lineno)d] %(message)s"
        )
    )
    root = logging.getLogger()
    root.addHandler(handler)
    if _pending is not None:
        _pending.setTarget(handler)
        _pending.flush()
        root.removeHandler(_pending)
        _pending.close()
        _pending = None
        if announce:
            logger.info("library logs: %s", path)
    _log_path = path
    return path


# ---------------------------------------------------------------------------------------------
# Failures
# ---------------------------------------------------------------------------------------------

# (exception class, as module.QualName anywhere in the error's MRO) -> (exit status, what failed).
# Matched by name, so this module imports none of them; the first match in the MRO wins.
EXIT_STATUS: dict[str, tuple[int, str]] = {
    "ib_jax.validate.InvalidRunError": (3, "invalid configuration"),
    "ib_jax.contract.config_flag.ConfigFlagError": (3, "invalid configuration"),
    "ib_jax.contract.config.ConfigFieldError": (3, "invalid configuration"),
    "ib_jax.eval.loading.ModelMismatchError": (3, "checkpoint does not fit the configuration"),
    "ib_jax.checkpoint.UnreadableCheckpointError": (5, "unreadable checkpoint"),
    "ib_jax.checkpoint.CheckpointMismatchError": (3, "checkpoint does not fit the configuration"),
    "ib_jax.train.data_feed.DataWorkerError": (6, "data worker died"),
    "ib_jax.train.trainer.NonFiniteLossError": (7, "training diverged"),
    "data_pipelines.preprocess.BadDataError": (4, "bad input data"),
    "data_pipelines.formats.common.ParseError": (4, "bad annotation file"),
    "ib_jax.convert.core.ConversionError": (4, "bad pretrained checkpoint"),
    "ib_jax.convert.readers.CheckpointFileError": (4, "bad pretrained checkpoint"),
    "builtins.FileNotFoundError": (4, "missing file"),
    "gcsfs.retry.HttpError": (4, "bucket not readable"),  # e.g. 401: no or expired credentials
    "builtins.MemoryError": (8, "out of memory"),
}
UNEXPECTED = (1, "unexpected error")


def failure_class(error: BaseException) -> tuple[int, str]:
    """(exit status, what failed) of `error` (see EXIT_STATUS)."""
    if "RESOURCE_EXHAUSTED" in str(error).split("\n")[0]:  # XLA's out-of-memory errors
        return EXIT_STATUS["builtins.MemoryError"]
    if isinstance(error, ImportError) and "to access" in str(error):
        # fsspec, for a bucket path without its filesystem package: "Please install gcsfs to
        # access Google Storage" (`pip install .[gcs]`)
        return 3, "missing filesystem package"
    for cls in type(error).__mro__:
        status = EXIT_STATUS.get(f"{cls.__module__}.{cls.__qualname__}")
        if status:
            return status
    return UNEXPECTED


def describe(error: BaseException) -> str:
    """The error's own message, first line only (all of an InvalidRunError's: one per problem),
    or the innermost cause's when the error has none; prefixed by the error's type only when
    the failure class does not already say what it is (an unexpected error)."""
    message = str(error).strip()
    if type(error).__name__ == "InvalidRunError":
        return message
    while not message and (error.__cause__ or error.__context__) is not None:
        error = error.__cause__ or error.__context__
        message = str(error).strip()
    first = message.splitlines()[0] if message else ""
    if failure_class(error) != UNEXPECTED and first:
        return first
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def _log_failure(message: str, error: BaseException) -> None:
    logger.error(message, exc_info=error, extra={"file_only": True})
    for handler in logging.getLogger().handlers:
        handler.flush()


def _thread_failure(args: threading.ExceptHookArgs) -> None:
    """A background thread's error: the traceback to the log, one line to the console."""
    name = args.thread.name if args.thread else "a thread"
    _log_failure(f"background thread {name} failed", args.exc_value)
    logger.warning("background thread %s failed: %s", name, describe(args.exc_value))


def _unraisable(unraisable: Any) -> None:
    """An exception nothing could raise (`sys.unraisablehook`): the traceback to the log.

    When an Orbax restore fails (an unreadable checkpoint the job then falls back from), its
    event loop closes while TensorStore reads are still in flight; each read that completes
    later finds the loop closed, and TensorStore hands that `RuntimeError` here, one per array.
    Those are expected and stay in the log; any other gets one line on the console too.
    """
    error, where = unraisable.exc_value, unraisable.object
    if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
        logger.info("unraisable exception in %r", where, exc_info=error, extra={"file_only": True})
        return
    _log_failure(f"unraisable exception in {where!r}", error)
    logger.warning("unraisable exception in %r: %s", where, describe(error))


def guarded(job: str, main: Callable[[list[str]], Any]) -> Callable[[list[str]], Any]:
    """`main` for `absl.app.run`, ending any error as the module docstring says.

    `job` names the log file (`WORKDIR/logs/<job>.log`, opened here if `main` had not yet).
    """

    @functools.wraps(main)
    def run(argv: list[str]) -> Any:
        """`main(argv)`; an error becomes one line and an exit status."""
        threading.excepthook = _thread_failure
        sys.unraisablehook = _unraisable
        quiet_console()  # (the job's main calls it too): before anything can fail
        try:
            if "workdir" not in flags.FLAGS and _log_path is None:  # a tool without a workdir
                log_to_file(None, job, announce=False)
            config_flag.raise_deferred()  # a --config mistake met while parsing the flags
            return main(argv)
        except SystemExit:
            raise
        except KeyboardInterrupt as error:
            _log_failure(f"{job} interrupted", error)
            print(f"{job}: interrupted", file=sys.stderr)
            raise SystemExit(130) from None
        except Exception as error:
            status, what = failure_class(error)
            path = _log_path
            workdir = flags.FLAGS["workdir"].value if "workdir" in flags.FLAGS else None
            if path is None and workdir:
                try:
                    path = log_to_file(workdir, job, announce=False)  # named below
                except OSError:
                    path = None
            _log_failure(f"{job} failed ({what}, exit status {status})", error)
            where = f"; traceback in {path}" if path else ""
            # The status ends the first line; an InvalidRunError's problems follow, one a line.
            first, *rest = describe(error).split("\n")
            print(
                f"{job}: {what}: {first} (exit status {status}{where})",
                *rest,
                sep="\n",
                file=sys.stderr,
            )
            if path is None:  # no log file to hold it: the traceback must not be lost
                traceback.print_exception(error, file=sys.stderr)
            raise SystemExit(status) from None

    return run
