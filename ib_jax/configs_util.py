"""Loading `configs/*.py` files (`get_config(arg)`) outside absl flags, and reading their parts."""

from __future__ import annotations

import importlib.util
import os

import ml_collections

from ib_jax.contract.model import ModelConfig, from_config_dict


def load_config(path: str) -> ml_collections.ConfigDict:
    """`configs/x.py` or `configs/x.py:arg` -> the ConfigDict its `get_config(arg)` returns."""
    path, _, arg = path.partition(":")
    if not os.path.exists(path):
        raise FileNotFoundError(f"config file {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {path} has no get_config(arg) function")
    return module.get_config(arg or None)


def model_config(config: ml_collections.ConfigDict) -> ModelConfig:
    """The frozen ModelConfig dataclass of a run config's `model` section."""
    return from_config_dict(config.model)
