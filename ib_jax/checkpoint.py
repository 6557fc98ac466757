"""Orbax checkpointing of a training run: parameters, optimizer state, data iterator and config.

Layout: `WORKDIR/checkpoints/<step>/{params, opt_state, data_iterator, config}`. `params` is the
full parameter tree (trainable in fp32, frozen in their storage dtype), so an evaluation job or a
user needs nothing else. Orbax writes each step to a temporary directory and renames it when
complete, so an interrupted save never replaces a good checkpoint.
"""

from __future__ import annotations

import os
from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp

ITEMS = ("params", "opt_state", "data_iterator", "config")


def checkpoint_dir(workdir: str) -> str:
    """`WORKDIR/checkpoints`; bucket URLs (gs://...) are kept as they are for Orbax."""
    return os.path.join(workdir if "://" in workdir else os.path.abspath(workdir), "checkpoints")


def make_manager(
    workdir: str,
    every_steps: int = 1,
    keep: int = 3,
    async_save: bool = True,
    read_only: bool = False,
) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        save_interval_steps=every_steps,
        enable_async_checkpointing=async_save,
        read_only=read_only,
        create=not read_only,
    )
    handlers = {
        "params": ocp.StandardCheckpointHandler(),
        "opt_state": ocp.StandardCheckpointHandler(),
        "data_iterator": grain.checkpoint.CheckpointHandler(),
        "config": ocp.JsonCheckpointHandler(),
    }
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options, item_handlers=handlers)


def save(
    manager: ocp.CheckpointManager,
    step: int,
    params: Any,
    opt_state: Any,
    data_iterator: Any,
    config: ml_collections.ConfigDict,
    force: bool = False,
) -> bool:
    args = ocp.args.Composite(
        params=ocp.args.StandardSave(params),
        opt_state=ocp.args.StandardSave(opt_state),
        data_iterator=grain.checkpoint.CheckpointSave(data_iterator),
        config=ocp.args.JsonSave(config.to_dict()),
    )
    return manager.save(step, args=args, force=force)


def restore(
    manager: ocp.CheckpointManager,
    step: int,
    abstract_params: Any,
    abstract_opt_state: Any | None,
    data_iterator: Any | None,
) -> dict[str, Any]:
    """Restore onto the shardings carried by the abstract trees (any mesh shape)."""
    items = {"params": ocp.args.StandardRestore(abstract_params)}
    if abstract_opt_state is not None:
        items["opt_state"] = ocp.args.StandardRestore(abstract_opt_state)
    if data_iterator is not None:
        items["data_iterator"] = grain.checkpoint.CheckpointRestore(data_iterator)
    return dict(manager.restore(step, args=ocp.args.Composite(**items)))


def restore_params(
    workdir: str, step: int | None = None, abstract_params: Any | None = None
) -> tuple[int, Any, dict]:
    """(step, params, config dict) of a run's checkpoint; the latest if `step` is None."""
    manager = make_manager(workdir, read_only=True)
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint under {checkpoint_dir(workdir)}")
    target = (
        ocp.args.StandardRestore(abstract_params)
        if abstract_params is not None
        else ocp.args.StandardRestore()
    )
    restored = manager.restore(
        step, args=ocp.args.Composite(params=target, config=ocp.args.JsonRestore())
    )
    manager.close()
    return step, restored["params"], restored["config"]


def abstract_like(tree: Any, shardings: Any) -> Any:
    return jax.tree_util.tree_map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )
