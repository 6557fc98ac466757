"""ib_jax: InstructBLIP in JAX/Flax."""

from __future__ import annotations

from typing import Any


def load_pretrained(path: str, **overrides: Any) -> tuple[Any, Any]:
    """(model, params) from an HF InstructBLIP directory or a directory written by `ib_jax.convert`.

    `overrides` replace ModelConfig fields (dtype, scan_layers, remat_policy...). The one way
    pretrained weights are read: evaluation (`--checkpoint=DIR`) and training
    (`config.init.pretrained`) come through here too.
    """
    from ib_jax.convert import api
    from ib_jax.models.instructblip import InstructBlip

    if api.is_converted_directory(path):
        config, params = api.load_converted(path, **overrides)
    else:
        config, params, _ = api.convert_hf(path, **overrides)
    return InstructBlip(config), params


def generate(*args: Any, **kwargs: Any) -> Any:
    """Batched, jitted generation; see `ib_jax.decode.generate`."""
    from ib_jax import decode

    return decode.generate(*args, **kwargs)


def predict(*args: Any, **kwargs: Any) -> Any:
    """Output text (or ranked candidates) per image for PIL images or paths and their prompts,
    preprocessing and tokenizing as the eval job does; see `ib_jax.predict.predict`."""
    from ib_jax import predict as predict_lib

    return predict_lib.predict(*args, **kwargs)


__all__ = ["load_pretrained", "generate", "predict"]
