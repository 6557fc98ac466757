"""Shared test setup: 8 simulated CPU devices, float32 matmuls, a persistent compilation cache."""

import os
import tempfile

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
