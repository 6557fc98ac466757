"""Shared test setup: 8 simulated CPU devices, float32 matmuls, a persistent compilation cache."""

import importlib.util
import logging
import os
import pathlib
import tempfile

import pytest

# Must be set before jax initialises its backends.
os.environ.setdefault("JAX_NUM_CPU_DEVICES", "8")
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "float32")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Many tests compile the same small programs (a training run and its resumption, subprocesses):
# XLA compilation dominates their time on 2 cores, so share compiled executables across them.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "ib_jax_test_jit_cache")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


# Test modules that need the PyTorch reference declare it (`pytestmark = pytest.mark.reference`).
# Where torch is not installed (the newest-stack CI lane: no torch build for its Python here) they
# are not even imported, so `pytest -m "not reference"` runs everything else.
HAVE_TORCH = importlib.util.find_spec("torch") is not None
REFERENCE_MODULE_MARK = "pytestmark = pytest.mark.reference"


def pytest_ignore_collect(collection_path: pathlib.Path, config) -> bool | None:
    """Skip importing reference-only test modules when torch is missing."""
    if (
        HAVE_TORCH
        or collection_path.suffix != ".py"
        or not collection_path.name.startswith("test_")
    ):
        return None
    return True if REFERENCE_MODULE_MARK in collection_path.read_text() else None


@pytest.fixture
def root_logging():
    """Restore the root logger's handlers and level after a test rewires them (tests of the
    console: test_cli.py, test_cli_errors.py)."""
    # Imported here, not above: the environment must be set before anything can load jax.
    from ib_jax.contract import cli

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)
    cli._pending = None
    cli._log_path = None
