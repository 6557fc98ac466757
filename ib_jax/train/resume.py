"""Resuming a run from the newest checkpoint that restores, past any that do not.

A checkpoint can be damaged after Orbax committed it (a full disk, an interrupted copy, a deleted
file): its restore fails. Policy `config.checkpoint.on_unreadable`:

- "fallback" (default): one warning line (step, path, cause), the step directory is moved aside
  as `<step>.unreadable-<time>` (kept for inspection, ignored by Orbax, so the step can be saved
  again), and the next older checkpoint is tried; with none left the run starts from step 0.
  The cost is the steps since the previous checkpoint, not the run.
- "stop": the `UnreadableCheckpointError` ends the job, and the checkpoint stays where it is.

With several processes, every process tries the same step and they agree on the outcome (an
all-gather), so they all resume from the same step or all fall back.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from ib_jax import checkpoint, distributed
from ib_jax.contract.config import CheckpointConfig, build
from ib_jax.train.state import TrainState, merge_params, split_params

logger = logging.getLogger(__name__)

POLICIES = ("fallback", "stop")


@dataclasses.dataclass
class Resumed:
    """Where a run starts: `step` (0 for a fresh run), the state restored at it (None for a fresh
    run), the data iterator positioned after it, and the steps that were moved aside."""

    step: int
    state: TrainState | None
    frozen: Any
    data_iterator: Any
    unreadable: list[int]


def policy(config: ml_collections.ConfigDict) -> str:
    """`config.checkpoint.on_unreadable` ("fallback" when the config predates the field)."""
    value = build(CheckpointConfig, "checkpoint", config.get("checkpoint")).on_unreadable
    if value not in POLICIES:
        raise ValueError(f"config.checkpoint.on_unreadable={value!r}; expected one of {POLICIES}")
    return value


def _all_processes_ok(ok: bool) -> bool:
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.array(ok))))


def restore_latest(
    config: ml_collections.ConfigDict,
    workdir: str,
    manager: ocp.CheckpointManager,
    program: Any,
    dataset: grain.IterDataset,
) -> Resumed:
    """The newest step of `manager` that restores (train state, frozen params, data iterator),
    per the module's policy; `program` is the trainer's `TrainProgram` (abstract state and
    shardings), `dataset` the training dataset (a fresh iterator is made for every attempt, so a
    failed restore never leaves it half-positioned)."""
    on_unreadable = policy(config)
    abstract = program.abstract_state
    abstract_params = merge_params(abstract.trainable, program.abstract_frozen)
    unreadable: list[int] = []
    for step in sorted(manager.all_steps(), reverse=True):
        data_iterator = iter(dataset)
        error = None
        try:
            restored = checkpoint.restore(
                manager, step, abstract_params, abstract.opt_state, data_iterator
            )
        except checkpoint.UnreadableCheckpointError as caught:
            error = caught
        if _all_processes_ok(error is None):
            if unreadable:
                manager.reload()
                logger.warning(
                    "resumed from step %d, the newest readable checkpoint (unreadable: %s)",
                    step,
                    ", ".join(map(str, unreadable)),
                )
            else:
                logger.info("resumed from step %d", step)
            trainable, frozen = split_params(restored["params"], config.train.trainable)
            step_array = jax.device_put(jnp.asarray(step, jnp.int32), abstract.step.sharding)
            state = TrainState(step_array, trainable, restored["opt_state"])
            return Resumed(step, state, frozen, data_iterator, unreadable)
        if error is None:  # this process read it, another did not
            error = checkpoint.UnreadableCheckpointError(
                step, checkpoint.step_dir(workdir, step), "another process could not restore it"
            )
        if on_unreadable == "stop":
            raise error
        _set_aside(workdir, step, error)
        unreadable.append(step)
    if unreadable:
        manager.reload()
        logger.warning("no readable checkpoint left: training starts from step 0")
    return Resumed(0, None, None, iter(dataset), unreadable)


def _set_aside(workdir: str, step: int, error: checkpoint.UnreadableCheckpointError) -> None:
    """Move the step aside (process 0) and log one line; every process waits for the move."""
    if jax.process_index() == 0:
        moved = checkpoint.move_aside(workdir, step)
        logger.warning("%s; moved aside to %s, trying the previous checkpoint", error, moved)
    distributed.barrier(f"ib_jax_unreadable_checkpoint_{step}")
