"""The eval job's parameters: from a training checkpoint, a converted directory or an HF directory,
restored straight into the shardings of the eval mesh.

The model evaluated is the one the checkpoint says it holds (the `config` item of a training
checkpoint, `config.json` of a converted directory, the HF config), with the eval job's numerics
(`program.inference_config`). When the eval config has a `model` section that disagrees with it
in architecture, loading stops with a message naming each differing field: the config describes
another model than the checkpoint holds. Layout and numerics (scan_layers, remat, dtypes) are not
architecture; the checkpoint's layout is kept.

No source is read into one device: Orbax restores each device's slice onto the target shardings
(casting to the parameter dtype as it reads), and an HF directory is converted group by group
(`ib_jax.convert.write`), each group placed onto its shardings before the next is read.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import ml_collections
from flax import traverse_util

from ib_jax import checkpoint as checkpoint_lib
from ib_jax.contract.model import ModelConfig, from_config_dict
from ib_jax.convert import api, write
from ib_jax.eval import program as program_lib
from ib_jax.models.instructblip import InstructBlip

ARCHITECTURE = ("lm_type", "vision", "qformer", "text", "num_query_tokens", "instruction_aware")


class ModelMismatchError(ValueError):
    """The eval config's model section describes another model than the checkpoint holds."""


@dataclasses.dataclass
class Loaded:
    """What the eval job evaluates: the program, the outputs' name and the run's step (if any)."""

    program: program_lib.InferenceProgram
    tag: str  # `step_<N>` or the directory's base name
    step: int | None


def _architecture(model_config: ModelConfig) -> dict[str, Any]:
    values = dataclasses.asdict(model_config)
    values["lm_type"] = model_config.lm_type
    return traverse_util.flatten_dict({k: values[k] for k in ARCHITECTURE}, sep=".")


def check_architecture(config: ml_collections.ConfigDict, saved: ModelConfig, source: str) -> None:
    """Raise ModelMismatchError naming every architecture field where `config.model` (if the config
    has one) and the checkpoint's model differ."""
    if not config.get("model"):
        return
    ours, theirs = _architecture(from_config_dict(config.model)), _architecture(saved)
    diffs = [
        f"model.{k}={ours.get(k)!r} in the config, {theirs.get(k)!r} in the checkpoint"
        for k in sorted(set(ours) | set(theirs))
        if ours.get(k) != theirs.get(k)
    ]
    if diffs:
        raise ModelMismatchError(
            f"the eval config's model section disagrees with the model saved in {source}: "
            + "; ".join(diffs)
            + ". The checkpoint's model is what would be evaluated: fix or drop config.model."
        )


def _saved_run_config(workdir: str, step: int) -> dict[str, Any] | None:
    """The run config saved with a training checkpoint (None for a checkpoint without one)."""
    import orbax.checkpoint as ocp
    from etils import epath

    if not (epath.Path(checkpoint_lib.checkpoint_dir(workdir)) / str(step) / "config").exists():
        return None
    manager = checkpoint_lib.make_manager(workdir, read_only=True)
    try:
        restored = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
        return dict(restored["config"])
    finally:
        manager.close()


def _program(
    config: ml_collections.ConfigDict, saved: ModelConfig, mesh: Any, rules: tuple
) -> tuple[InstructBlip, Any]:
    model = InstructBlip(program_lib.inference_config(saved, config.get("eval")))
    return model, program_lib.abstract_params(model, mesh, rules)


def from_training_checkpoint(
    config: ml_collections.ConfigDict, workdir: str, step: int, mesh: Any, rules: tuple
) -> Loaded:
    """WORKDIR/checkpoints/STEP: its saved config's model (else config.model), its params item."""
    source = os.path.join(checkpoint_lib.checkpoint_dir(workdir), str(step))
    run_config = _saved_run_config(workdir, step)
    if run_config and run_config.get("model"):
        saved = from_config_dict(run_config["model"])
    elif config.get("model"):
        saved = from_config_dict(config.model)
    else:
        raise ValueError(f"{source} has no saved config and the eval config has no model section")
    check_architecture(config, saved, source)
    model, abstract = _program(config, saved, mesh, rules)
    _, params, _ = checkpoint_lib.restore_params(workdir, step, abstract)
    return Loaded(program_lib.InferenceProgram(model, params, mesh, rules), f"step_{step}", step)


def from_directory(config: ml_collections.ConfigDict, path: str, mesh: Any, rules: tuple) -> Loaded:
    """A directory written by `ib_jax.convert` (config.json + params/) or an HF InstructBLIP one."""
    tag = os.path.basename(os.path.normpath(path))
    if api.is_converted_directory(path):
        import orbax.checkpoint as ocp

        with open(os.path.join(path, "config.json")) as f:
            saved = from_config_dict(json.load(f))
        check_architecture(config, saved, path)
        model, abstract = _program(config, saved, mesh, rules)
        with ocp.StandardCheckpointer() as checkpointer:
            params = checkpointer.restore(os.path.abspath(os.path.join(path, "params")), abstract)
        return Loaded(program_lib.InferenceProgram(model, params, mesh, rules), tag, None)
    if not os.path.exists(os.path.join(path, "config.json")):
        raise FileNotFoundError(
            f"--checkpoint={path}: neither a converted directory (config.json + params/) nor an "
            "HF InstructBLIP directory (config.json + safetensors), nor a step number"
        )

    scan = bool(config.get("model", {}).get("scan_layers", False))
    plan = api.plan_hf(path, scan_layers=scan)
    check_architecture(config, plan.config, path)
    model, abstract = _program(config, plan.config, mesh, rules)
    placed: dict[str, Any] = {}
    flat_abstract = traverse_util.flatten_dict(abstract, sep="/")

    def sink(piece: dict[str, Any]) -> None:  # one group of parameters at a time, onto devices
        for name, value in traverse_util.flatten_dict(piece, sep="/").items():
            if name not in flat_abstract:
                raise ValueError(f"{path}: converted parameter {name} is not in the model")
            placed[name] = program_lib.place(value, flat_abstract[name])

    write.write(plan, scan, sink)
    missing = sorted(set(flat_abstract) - set(placed))
    if missing:
        raise ValueError(f"{path}: the conversion gave no value for {missing[:5]}")
    params = traverse_util.unflatten_dict(placed, sep="/")
    return Loaded(program_lib.InferenceProgram(model, params, mesh, rules), tag, None)


def load(config: ml_collections.ConfigDict, workdir: str, checkpoint: str | int | None) -> Loaded:
    """The program for `checkpoint`: a step of the run in `workdir` (None: the latest), or a
    converted / HF directory; on the eval mesh (`program.eval_mesh`)."""
    mesh, rules = program_lib.eval_mesh(config)
    if checkpoint not in (None, "") and not str(checkpoint).isdigit():
        return from_directory(config, str(checkpoint), mesh, rules)
    if checkpoint in (None, ""):
        steps = checkpoint_lib.finalized_steps(workdir)
        if not steps:
            raise FileNotFoundError(
                f"no training checkpoints under {workdir}/checkpoints and no --checkpoint given"
            )
        checkpoint = steps[-1]
    return from_training_checkpoint(config, workdir, int(checkpoint), mesh, rules)


__all__ = [
    "ARCHITECTURE",
    "ModelMismatchError",
    "Loaded",
    "check_architecture",
    "from_training_checkpoint",
    "from_directory",
    "load",
]
