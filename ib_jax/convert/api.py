"""Conversion entry points: HF directories and LAVIS state dicts -> (ModelConfig, params), saved with Orbax.

A converted directory holds `config.json` (our `config.model`) and `params/` (an Orbax PyTree
checkpoint) in the layout the config asks for (scanned or not).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np

from ib_jax.convert import core, readers, rules
from ib_jax.convert.hf_config import model_config_from_hf, read_hf_config
from ib_jax.models.configs import ModelConfig, from_config_dict, to_config_dict


def _tie_if_headless(
    config: ModelConfig, state: dict[str, np.ndarray], head_key: str
) -> ModelConfig:
    if config.lm_type == "t5" and head_key not in state:
        return dataclasses.replace(
            config, text=dataclasses.replace(config.text, tie_word_embeddings=True)
        )
    return config


def convert_hf(
    directory: str, **overrides: Any
) -> tuple[ModelConfig, dict[str, Any], dict[str, list[str]]]:
    """A `save_pretrained` InstructBLIP directory -> (config, params, report)."""
    config = model_config_from_hf(read_hf_config(directory), **overrides)
    state = readers.read_hf_directory(directory)
    if config.lm_type == "llama":
        from ib_jax.convert import llama_rules

        table, aliases, unused = llama_rules.HF_RULES, llama_rules.HF_ALIASES, llama_rules.HF_UNUSED
    else:
        config = _tie_if_headless(config, state, "language_model.lm_head.weight")
        table, aliases, unused = rules.HF_RULES, rules.HF_ALIASES, []
    params, report = core.convert_state_dict(state, table, config, aliases, unused)
    return config, _layout(params, config), report


def convert_lavis(
    checkpoint: str,
    config: ModelConfig,
    vit: str | None = None,
    language_model: str | None = None,
) -> tuple[ModelConfig, dict[str, Any], dict[str, list[str]]]:
    """A LAVIS state dict; trimmed files get the frozen towers from `vit` (EVA ViT-g .pth, keys
    without the `visual_encoder.` prefix) and `language_model` (an HF T5 directory or file)."""
    state = readers.read_any(checkpoint)
    prefix = "t5_model." if config.lm_type == "t5" else "llm_model."
    if vit is not None:
        state.update({f"visual_encoder.{k}": v for k, v in readers.read_any(vit).items()})
    if language_model is not None:
        state.update({prefix + k: v for k, v in readers.read_any(language_model).items()})
    state = core.fuse_lavis_qkv_bias(state)
    if config.lm_type == "llama":
        from ib_jax.convert import llama_rules

        table, aliases, unused = (
            llama_rules.LAVIS_RULES,
            llama_rules.LAVIS_ALIASES,
            llama_rules.LAVIS_UNUSED,
        )
    else:
        config = _tie_if_headless(config, state, "t5_model.lm_head.weight")
        table, aliases, unused = rules.LAVIS_RULES, rules.LAVIS_ALIASES, rules.LAVIS_UNUSED
    params, report = core.convert_state_dict(state, table, config, aliases, unused)
    return config, _layout(params, config), report


def _layout(params: dict[str, Any], config: ModelConfig) -> dict[str, Any]:
    return core.stack_scanned(params) if config.scan_layers else params


def save_converted(directory: str, config: ModelConfig, params: dict[str, Any]) -> None:
    """Write `config.json` + an Orbax `params/` checkpoint; the directory must not hold one already."""
    import orbax.checkpoint as ocp

    directory = os.path.abspath(directory)
    os.makedirs(directory, exist_ok=True)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(os.path.join(directory, "params"), params)
    # The config is written last: a directory with config.json holds a complete checkpoint.
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(to_config_dict(config).to_dict(), f, indent=2)


def load_converted(directory: str, **overrides: Any) -> tuple[ModelConfig, dict[str, Any]]:
    """Read a directory written by `save_converted`, re-laid-out if `scan_layers` is overridden."""
    import orbax.checkpoint as ocp

    directory = os.path.abspath(directory)
    with open(os.path.join(directory, "config.json")) as f:
        saved = from_config_dict(json.load(f))
    with ocp.StandardCheckpointer() as checkpointer:
        params = checkpointer.restore(os.path.join(directory, "params"))
    config = dataclasses.replace(saved, **overrides)
    if config.scan_layers != saved.scan_layers:
        params = core.stack_scanned(params) if config.scan_layers else core.unstack_scanned(params)
    return config, params


def is_converted_directory(path: str) -> bool:
    return os.path.isdir(os.path.join(path, "params")) and os.path.exists(
        os.path.join(path, "config.json")
    )
