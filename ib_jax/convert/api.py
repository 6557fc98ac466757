"""Conversion entry points: HF directories and LAVIS state dicts -> (ModelConfig, params), saved with Orbax.

A converted directory holds `config.json` (our `config.model`) and `params/` (an Orbax PyTree
checkpoint) in the layout the config asks for (scanned or not). Each source is first *planned*
(`plan_hf`, `plan_lavis`, `blip2.plan_blip2`: every key matched, every shape checked, nothing
read), then either converted into memory (`convert_*`, for `load_pretrained`) or streamed to a
directory (`write_converted`: bounded memory, for the command line).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import os
from types import ModuleType
from typing import Any

from etils import epath

from ib_jax.contract.model import ModelConfig, from_config_dict, to_config_dict
from ib_jax.convert import core, readers, tokenizer_ids, write
from ib_jax.convert.hf_config import image_token_index, model_config_from_hf, read_hf_config
from ib_jax.models import families

logger = logging.getLogger(__name__)
# Beside a converted checkpoint: the HF config fields ModelConfig does not hold (the `<image>`
# placeholder id), so that `ib_jax.export` gives them back without asking.
HF_EXTRAS = "hf_extras.json"


@dataclasses.dataclass
class HFPlan(core.Plan):
    """A plan from an HF directory, with its config's `image_token_index` (None if it has none)."""

    image_token_index: int | None = None


def family_rules(config: ModelConfig) -> ModuleType:
    """The conversion tables of `config`'s LM family: the module its registry entry names
    (`LMFamily.conversion`), holding HF_RULES/ALIASES/UNUSED, LAVIS_RULES/ALIASES/UNUSED,
    LAVIS_PREFIX and TIE_HEADLESS."""
    return importlib.import_module(families.family_of(config.text).conversion)


def tie_if_headless(config: ModelConfig, state: readers.LazyState, head_key: str) -> ModelConfig:
    """A checkpoint without an lm_head key reads its logits off the shared embedding, where the
    family allows it (T5)."""
    if family_rules(config).TIE_HEADLESS and head_key not in state:
        return dataclasses.replace(
            config, text=dataclasses.replace(config.text, tie_word_embeddings=True)
        )
    return config


def plan_hf(directory: str, **overrides: Any) -> HFPlan:
    """A `save_pretrained` InstructBLIP directory -> its conversion plan."""
    hf = read_hf_config(directory)
    config = model_config_from_hf(hf, **overrides)
    text, message = tokenizer_ids.reconcile(directory, config.text)
    if message:
        logger.warning("%s", message)
        config = dataclasses.replace(config, text=text)
    state = readers.read_hf_directory(directory)
    tables = family_rules(config)
    config = tie_if_headless(config, state, "language_model.lm_head.weight")
    plan = core.plan(state, tables.HF_RULES, config, tables.HF_ALIASES, tables.HF_UNUSED)
    fields = {f.name: getattr(plan, f.name) for f in dataclasses.fields(plan)}
    return HFPlan(**fields, image_token_index=image_token_index(hf))


def plan_lavis(
    checkpoint: str,
    config: ModelConfig,
    vit: str | None = None,
    language_model: str | None = None,
) -> core.Plan:
    """A LAVIS state dict; trimmed files get the frozen towers from `vit` (EVA ViT-g .pth, keys
    without the `visual_encoder.` prefix) and `language_model` (an HF T5/Vicuna directory or file)."""
    state = readers.read_any(checkpoint)
    tables = family_rules(config)
    if vit is not None:
        state.update(readers.read_any(vit), prefix="visual_encoder.")
    if language_model is not None:
        state.update(readers.read_any(language_model), prefix=tables.LAVIS_PREFIX)
    core.fuse_lavis_qkv_bias(state)
    config = tie_if_headless(config, state, tables.LAVIS_PREFIX + "lm_head.weight")
    return core.plan(state, tables.LAVIS_RULES, config, tables.LAVIS_ALIASES, tables.LAVIS_UNUSED)


def to_memory(plan: core.Plan) -> dict[str, Any]:
    """The plan's parameters as one nested dict, in the layout its config asks for."""
    sink = write.MemorySink()
    write.write(plan, plan.config.scan_layers, sink)
    return sink.result()


def convert_hf(
    directory: str, **overrides: Any
) -> tuple[ModelConfig, dict[str, Any], dict[str, list[str]]]:
    """A `save_pretrained` InstructBLIP directory -> (config, params, report)."""
    plan = plan_hf(directory, **overrides)
    return plan.config, to_memory(plan), plan.report


def convert_lavis(
    checkpoint: str,
    config: ModelConfig,
    vit: str | None = None,
    language_model: str | None = None,
) -> tuple[ModelConfig, dict[str, Any], dict[str, list[str]]]:
    """A LAVIS state dict (see `plan_lavis`) -> (config, params, report)."""
    plan = plan_lavis(checkpoint, config, vit=vit, language_model=language_model)
    return plan.config, to_memory(plan), plan.report


def _write_config(directory: str, config: ModelConfig) -> None:
    # The config is written last: a directory with config.json holds a complete checkpoint.
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(to_config_dict(config).to_dict(), f, indent=2)


def write_converted(
    directory: str, plan: core.Plan, flush_bytes: int = write.DEFAULT_FLUSH_BYTES
) -> write.WriteStats:
    """Stream the plan into `directory` (config.json + params/) holding about one layer group at
    a time; the directory must not hold a checkpoint already."""
    directory = os.path.abspath(directory)
    os.makedirs(directory, exist_ok=True)
    sink = write.OrbaxSink(os.path.join(directory, "params"))
    try:
        stats = write.write(plan, plan.config.scan_layers, sink, flush_bytes)
        sink.close()
    except BaseException:
        sink.abort()
        raise
    if isinstance(plan, HFPlan) and plan.image_token_index is not None:
        with open(os.path.join(directory, HF_EXTRAS), "w") as f:
            json.dump({"image_token_index": plan.image_token_index}, f, indent=2)
    _write_config(directory, plan.config)
    return stats


def save_converted(directory: str, config: ModelConfig, params: dict[str, Any]) -> None:
    """Write `config.json` + an Orbax `params/` checkpoint; the directory must not hold one already."""
    import orbax.checkpoint as ocp

    directory = os.path.abspath(directory)
    os.makedirs(directory, exist_ok=True)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(os.path.join(directory, "params"), params)
    _write_config(directory, config)


def load_converted(directory: str, **overrides: Any) -> tuple[ModelConfig, dict[str, Any]]:
    """Read a directory written by `save_converted`, re-laid-out if `scan_layers` is overridden."""
    import orbax.checkpoint as ocp

    directory = directory if "://" in directory else os.path.abspath(directory)  # gs:// too
    saved = from_config_dict(json.loads((epath.Path(directory) / "config.json").read_text()))
    with ocp.StandardCheckpointer() as checkpointer:
        params = checkpointer.restore(os.path.join(directory, "params"))
    config = dataclasses.replace(saved, **overrides)
    if config.scan_layers != saved.scan_layers:
        params = core.stack_scanned(params) if config.scan_layers else core.unstack_scanned(params)
    return config, params


def saved_image_token_index(directory: str) -> int | None:
    """The `image_token_index` of the HF directory a converted directory was made from, if any."""
    path = os.path.join(directory, HF_EXTRAS)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        index = json.load(f).get("image_token_index")
    return None if index is None else int(index)


def is_converted_directory(path: str) -> bool:
    """A directory written by `save_converted` / `write_converted` (config.json + params/)."""
    root = epath.Path(path)  # a local directory or a bucket (gs://)
    return (root / "params").is_dir() and (root / "config.json").exists()
