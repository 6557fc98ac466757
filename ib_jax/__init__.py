"""ib_jax: InstructBLIP in JAX/Flax."""

from __future__ import annotations

from typing import Any


def load_pretrained(path: str, **overrides: Any) -> tuple[Any, Any]:
    """(model, params) from an HF InstructBLIP directory, a directory written by `ib_jax.convert`,
    or a training run (its workdir: the latest step, or WORKDIR/checkpoints/STEP).

    `overrides` replace ModelConfig fields (dtype, scan_layers, remat_policy...). The one way
    pretrained weights are read: evaluation (`--checkpoint=DIR`) and training
    (`config.init.pretrained`, e.g. fine-tuning a run's result) come through here too.
    """
    from ib_jax import checkpoint
    from ib_jax.convert import api
    from ib_jax.models.instructblip import InstructBlip

    run = checkpoint.training_run(path)
    if run is not None:
        config, params = _from_training_run(*run, **overrides)
    elif api.is_converted_directory(path):
        config, params = api.load_converted(path, **overrides)
    else:
        config, params, _ = api.convert_hf(path, **overrides)
    return InstructBlip(config), params


def _from_training_run(workdir: str, step: int | None, **overrides: Any) -> tuple[Any, Any]:
    """(ModelConfig, host params) of a training checkpoint, the model its saved config names."""
    import dataclasses

    import jax

    from ib_jax import checkpoint
    from ib_jax.contract.model import from_config_dict
    from ib_jax.convert import core

    _, params, run_config = checkpoint.restore_params(workdir, step)
    saved = from_config_dict(run_config["model"])
    config = dataclasses.replace(saved, **overrides)
    params = jax.device_get(params)
    if config.scan_layers != saved.scan_layers:
        params = core.stack_scanned(params) if config.scan_layers else core.unstack_scanned(params)
    return config, params


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
