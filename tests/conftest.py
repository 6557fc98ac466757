"""Shared test setup: 8 simulated CPU devices and float32 matmuls everywhere."""
import os

# Must be set before jax initialises its backends.
os.environ.setdefault("JAX_NUM_CPU_DEVICES", "8")
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "float32")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
