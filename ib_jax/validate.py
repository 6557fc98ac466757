"""Start-up validation: the run config checked against the model and the data before anything
compiles, because JAX's out-of-bounds gathers do not raise (an id past an embedding table or a
position past a position table reads NaN or a clamped row, and the run goes on producing garbage).

    problems(config, job="train", workdir=..., num_devices=..., process_count=...) -> [str]
    check(config, ...)        raises InvalidRunError listing them, one line per problem

Every problem is one line naming the config field(s) and both values. What is checked, per job:

| check                                                              | train | eval | plan | data |
|--------------------------------------------------------------------|-------|------|------|------|
| tokenizer files exist; their ids fit the LM's and the Q-Former's   |   x   |  x   |      |  x   |
|   embedding tables (the Q-Former's counting [DEC]); special ids    |       |      |      |      |
| qformer_max_len <= Q-Former max_position_embeddings; LLaMA's       |   x   |  x   |  x   |  x   |
|   queries + instruction + target <= max_position_embeddings        |       |      |      |      |
| image size a multiple of the patch size (other sizes interpolate   |   x   |  x   |  x   |  x   |
|   the position table); config.init.pretrained's architecture      |       |      |      |      |
| the mesh fits the devices; batch sizes divide over processes and   |   x   |  x   |  x   |      |
|   data x fsdp (x grad_accum_steps)                                 |       |      |      |      |
| annotation files and image directories of the job's datasets exist |   x   |  x   |      |      |
| the workdir is writable                                            |   x   |  x   |      |      |

`data` is `data_pipelines.check`, which checks every dataset's files itself; `plan` is
`launch.aot`, which compiles for devices that are not here and reads no data. The checks wire the
data to the model (they read the tokenizers through `data_pipelines.text`), so this module is part
of the job layer: the jobs, the planner and the data check import it, the model side never does.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import uuid
from collections.abc import Mapping
from typing import Any

import ml_collections

from data_pipelines import model_checks
from ib_jax import sharding
from ib_jax.contract.config import evaluations
from ib_jax.contract.model import ModelConfig, from_config_dict
from ib_jax.convert import api, hf_config

JOBS = ("train", "eval", "plan", "data")


class InvalidRunError(ValueError):
    """The configuration cannot run; `problems` holds one line per failed check."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__(
            f"{len(problems)} problem(s) with the run configuration:\n  " + "\n  ".join(problems)
        )


def check(config: ml_collections.ConfigDict, **kwargs: Any) -> None:
    """Raise `InvalidRunError` when `problems(config, **kwargs)` finds any."""
    found = problems(config, **kwargs)
    if found:
        raise InvalidRunError(found)


def problems(
    config: ml_collections.ConfigDict | Mapping[str, Any],
    *,
    job: str = "train",
    workdir: str | None = None,
    num_devices: int | None = None,
    process_count: int | None = None,
    model_config: ModelConfig | None = None,
) -> list[str]:
    """Every problem of `config` for `job` (module docstring), one line each; [] when it can run.

    `num_devices` / `process_count` default to this machine's (jax); the planner passes its
    topology's. `model_config` replaces `config.model` (an eval job evaluating a checkpoint whose
    saved model is what runs). A config without a `model` section (a data config) skips the
    model checks.
    """
    if job not in JOBS:
        raise ValueError(f"job={job!r}; expected one of {JOBS}")
    data = config["data"] if "data" in config else config
    if model_config is None and "model" in config:
        model_config = from_config_dict(config["model"])
    found: list[str] = []
    if model_config is not None:
        if job != "plan":  # data_pipelines.check reports missing tokenizer files itself
            found += model_checks.tokenizer_problems(data, model_config, job != "data")
        found += model_checks.length_problems(data, model_config)
        found += model_checks.image_problems(data, model_config)
        found += _pretrained(config, model_config)
    if job in ("train", "eval", "plan") and "mesh" in config:
        found += _mesh_and_batches(config, job, num_devices, process_count)
    if job in ("train", "eval"):
        found += _dataset_files(config, data, job)
        if workdir:
            found += _workdir(workdir)
    return found


# ---------------------------------------------------------------------------------------------
# The pretrained checkpoint against the model (the data against the model: data_pipelines/model_checks.py)
# ---------------------------------------------------------------------------------------------


def pretrained_model_config(path: str) -> ModelConfig:
    """The architecture of a converted (`ib_jax.convert`) or HF InstructBLIP directory, read
    from its config.json without loading any weight."""
    if api.is_converted_directory(path):
        from etils import epath  # a local directory or a bucket (gs://)

        return from_config_dict(json.loads((epath.Path(path) / "config.json").read_text()))
    return hf_config.model_config_from_hf(hf_config.read_hf_config(path))


def _pretrained(config: Any, model: ModelConfig) -> list[str]:
    path = model_checks.setting_of(model_checks.setting_of(config, "init") or {}, "pretrained")
    if not path:
        return []
    from etils import epath

    try:
        is_directory = epath.Path(path).is_dir()
    except Exception as error:  # gs:// without gcsfs (ImportError), no credentials, ...
        return [f"init.pretrained={path!r} cannot be read: {type(error).__name__}: {error}"]
    if not is_directory:
        return [f"init.pretrained={path!r} is not a directory"]
    try:
        theirs = pretrained_model_config(path)
    except (OSError, ValueError) as error:
        return [f"init.pretrained={path!r}: {error}"]
    found = []
    for tower in ("vision", "qformer", "text"):
        ours_tower, their_tower = getattr(model, tower), getattr(theirs, tower)
        if type(ours_tower) is not type(their_tower):
            found.append(
                f"model.lm_type={model.lm_type!r} but init.pretrained={path!r} holds a "
                f"{theirs.lm_type!r} LM"
            )
            continue
        for field in dataclasses.fields(ours_tower):
            ours, their = getattr(ours_tower, field.name), getattr(their_tower, field.name)
            if ours != their:
                found.append(
                    f"model.{tower}.{field.name}={ours!r} but init.pretrained={path!r} has {their!r}"
                )
    if model.num_query_tokens != theirs.num_query_tokens:
        found.append(
            f"model.num_query_tokens={model.num_query_tokens} but init.pretrained={path!r} has "
            f"{theirs.num_query_tokens}"
        )
    return found


# ---------------------------------------------------------------------------------------------
# Devices, batches, files
# ---------------------------------------------------------------------------------------------


def _mesh_and_batches(
    config: Any, job: str, num_devices: int | None, process_count: int | None
) -> list[str]:
    if num_devices is None or process_count is None:
        import jax

        num_devices = jax.device_count() if num_devices is None else num_devices
        process_count = jax.process_count() if process_count is None else process_count
    mesh_config, field = config["mesh"], "mesh.shape"
    eval_mesh = model_checks.setting_of(model_checks.setting_of(config, "eval") or {}, "mesh")
    if job == "eval" and eval_mesh:
        mesh_config, field = (
            ml_collections.ConfigDict(dict(shape=dict(eval_mesh["shape"]))),
            ("eval.mesh.shape"),
        )
    sizes = {axis: int(mesh_config.shape[axis]) for axis in sharding.MESH_AXES}
    known = math.prod(size for size in sizes.values() if size != -1)
    if list(sizes.values()).count(-1) > 1:
        return [f"{field}={sizes} may have one -1 entry"]
    if -1 in sizes.values() and num_devices % known:
        return [f"{field}={sizes}: {num_devices} devices do not split into groups of {known}"]
    if -1 not in sizes.values() and known != num_devices:
        return [f"{field}={sizes} needs {known} devices, {num_devices} are available"]
    shape = dict(zip(sharding.MESH_AXES, sharding.mesh_shape(mesh_config, num_devices)))
    shards = shape["data"] * shape["fsdp"]
    data = config["data"]
    if job == "eval":
        eval_config = model_checks.setting_of(config, "eval") or {}
        batches = [
            (
                "eval.batch_size",
                model_checks.setting_of(eval_config, "batch_size")
                or model_checks.setting_of(data, "eval_batch_size")
                or 8,
                1,
            )
        ]
    else:
        accum = (
            int(model_checks.setting_of(config["train"], "grad_accum_steps", 1) or 1)
            if "train" in config
            else 1
        )
        batches = [
            ("data.global_batch_size", model_checks.setting_of(data, "global_batch_size"), accum)
        ]
    found = []
    for name, batch, accum in batches:
        if not batch:
            continue
        if batch % process_count:
            found.append(f"{name}={batch} does not split over {process_count} processes")
        if batch % (shards * accum):
            micro = f" x train.grad_accum_steps={accum}" if accum > 1 else ""
            found.append(
                f"{name}={batch} does not split over {field} data x fsdp = "
                f"{shape['data']} x {shape['fsdp']} devices{micro}"
            )
    return found


def _job_entries(config: Any, data: Any, job: str) -> list[tuple[str, Mapping[str, Any]]]:
    if job == "train":
        return [
            (f"data.datasets[{i}]", e)
            for i, e in enumerate(model_checks.setting_of(data, "datasets") or [])
        ]
    split = (
        model_checks.setting_of(model_checks.setting_of(config, "eval") or {}, "split") or "eval"
    )
    wanted = {(e.dataset, e.split or split) for e in evaluations(config)}
    return [
        (f"data.eval_datasets[{i}]", e)
        for i, e in enumerate(model_checks.setting_of(data, "eval_datasets") or [])
        if (e.get("name"), e.get("split") or "eval") in wanted
    ]


def _dataset_files(config: Any, data: Any, job: str) -> list[str]:
    found: list[str] = []
    for field, entry in _job_entries(config, data, job):
        # Generated entries (the demo) write their files on first read; TFDS entries have none.
        if entry.get("generate") or entry.get("tfds"):
            continue
        field = f"{field} ({entry.get('name')})"
        paths = entry.get("ann_path")
        for path in [paths] if isinstance(paths, str) else list(paths or []):
            model_checks.file_exists(path, f"{field}.ann_path", found)
        root = entry.get("image_root")
        if root and not os.path.isdir(root) and "://" not in str(root):
            found.append(f"{field}.image_root: directory {root!r} does not exist")
    return found


def _workdir(workdir: str) -> list[str]:
    from etils import epath

    probe = epath.Path(workdir) / f".write_probe_{uuid.uuid4().hex}"
    try:
        epath.Path(workdir).mkdir(parents=True, exist_ok=True)
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        return [f"--workdir={workdir!r} is not writable: {error.strerror or error}"]
    except Exception as error:  # gs:// without gcsfs (ImportError), gcsfs's HttpError (401), ...
        return [f"--workdir={workdir!r} is not writable: {type(error).__name__}: {error}"]
    return []
