"""A training run's workdir on disk: Orbax checkpoints and the training-done marker.

Layout:

    WORKDIR/checkpoints/<step>/params         the full parameter tree (trainable in fp32, frozen
                                              in their storage dtype): all an evaluation job or a
                                              user needs, without the optimizer state
    WORKDIR/checkpoints/<step>/opt_state      optimizer state of the trainable subtree
    WORKDIR/checkpoints/<step>/data_iterator  one Grain iterator state per process
    WORKDIR/checkpoints/<step>/config         the run's config as JSON
    WORKDIR/TRAINING_DONE                     written once training has reached num_steps

Items are separate so that a reader restores only what it needs (`restore_params` never touches
the optimizer state, which is twice the size of the trainable parameters). Orbax writes each step
into a temporary directory and renames it when complete, so an interrupted save never replaces a
good checkpoint, and a step directory whose name is a number is finalized.
"""

from __future__ import annotations

import os
from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp

# Written by the training job into the workdir when it has reached num_steps; evaluation in
# watch mode stops once it sees it (no further checkpoint will come).
FINAL_MARKER = "TRAINING_DONE"


def checkpoint_dir(workdir: str) -> str:
    """`WORKDIR/checkpoints`; bucket URLs (gs://...) are kept as they are for Orbax."""
    return os.path.join(workdir if "://" in workdir else os.path.abspath(workdir), "checkpoints")


def finalized_steps(workdir: str) -> list[int]:
    """Steps of the complete checkpoints in a local workdir, ascending (no Orbax manager needed).

    In-progress saves live in `<step>.orbax-checkpoint-tmp*` directories, which are skipped.
    """
    directory = checkpoint_dir(workdir)
    if not os.path.isdir(directory):
        return []
    return sorted(
        int(name)
        for name in os.listdir(directory)
        if name.isdigit() and os.path.isdir(os.path.join(directory, name))
    )


def training_done(workdir: str) -> bool:
    """Whether the training job has written FINAL_MARKER into `workdir`."""
    return os.path.exists(os.path.join(workdir, FINAL_MARKER))


def mark_training_done(workdir: str) -> None:
    """Write FINAL_MARKER (call from process 0 only, after the last checkpoint is saved)."""
    open(os.path.join(workdir, FINAL_MARKER), "w").close()


def make_manager(
    workdir: str,
    every_steps: int = 1,
    keep: int = 3,
    async_save: bool = True,
    read_only: bool = False,
) -> ocp.CheckpointManager:
    """An Orbax manager for `WORKDIR/checkpoints` with one handler per item of the layout.

    `every_steps`: saves at other steps are skipped unless forced; `keep`: the newest checkpoints
    kept; `async_save`: arrays are written by a background thread while training continues.
    """
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
    """Save every item of the layout at `step`; returns whether a save was started.

    `params` is the merged (trainable + frozen) tree; `force` saves off the `every_steps` grid
    (the last step, a preemption).
    """
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
    """Restore onto the shardings carried by the abstract trees (any mesh shape).

    `abstract_*` are trees of `jax.ShapeDtypeStruct` with shardings; `None` skips an item (e.g.
    the data iterator when the number of processes changed). Returns {item: restored}.
    """
    items = {"params": ocp.args.StandardRestore(abstract_params)}
    if abstract_opt_state is not None:
        items["opt_state"] = ocp.args.StandardRestore(abstract_opt_state)
    if data_iterator is not None:
        items["data_iterator"] = grain.checkpoint.CheckpointRestore(data_iterator)
    return dict(manager.restore(step, args=ocp.args.Composite(**items)))


def restore_params(
    workdir: str, step: int | None = None, abstract_params: Any | None = None
) -> tuple[int, Any, dict]:
    """(step, params, config dict) of a run's checkpoint; the latest if `step` is None.

    Without `abstract_params` the arrays are restored as Orbax saved them (on this host's default
    device); with it, onto its shapes, dtypes and shardings.
    """
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
    """`jax.ShapeDtypeStruct`s of `tree`'s leaves carrying the matching leaves of `shardings`."""
    return jax.tree_util.tree_map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )
