"""A training run's workdir: Orbax checkpoints and the training-done marker, on any filesystem.

Layout:

    WORKDIR/checkpoints/<step>/params         the full parameter tree (trainable in fp32, frozen
                                              in their storage dtype): all an evaluation job or a
                                              user needs, without the optimizer state
    WORKDIR/checkpoints/<step>/opt_state      optimizer state of the trainable subtree
    WORKDIR/checkpoints/<step>/data_iterator  one Grain iterator state per process: the same
                                              global data position in each (restorable on
                                              another number of processes), own bad counts
    WORKDIR/checkpoints/<step>/config         the run's config as JSON
    WORKDIR/checkpoints/<step>.unreadable-<t> a checkpoint that failed to restore, moved aside
    WORKDIR/TRAINING_DONE                     written once training has reached num_steps

Items are separate so that a reader restores only what it needs (`restore_params` never touches
the optimizer state, which is twice the size of the trainable parameters). Orbax writes each step
into a temporary directory and renames it when complete (local disks), or writes
`commit_success.txt` last (buckets, where a rename is a copy): a step directory whose name is a
number, and on a bucket holds that marker, is finalized.

Paths go through `etils.epath` (as Orbax's do), so a `gs://` workdir is listed and written like a
local one. Integrity: `check_step` looks for what a complete checkpoint holds without reading
arrays; a restore that fails anyway (a truncated or deleted data file) raises
`UnreadableCheckpointError`, one line naming the step, its path and the first cause.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

# Written by the training job into the workdir when it has reached num_steps; evaluation in
# watch mode stops once it sees it (no further checkpoint will come).
FINAL_MARKER = "TRAINING_DONE"
# Orbax's own commit marker (orbax/checkpoint/_src/path/atomicity_types.py).
COMMIT_MARKER = "commit_success.txt"
ITEMS = ("params", "opt_state", "data_iterator", "config")
ARRAY_ITEMS = ("params", "opt_state")
# A moved-aside step is named `<step>.unreadable-<unix time>`: not a number, so Orbax's manager and
# `finalized_steps` ignore it, and a later save of the same step is not refused.
UNREADABLE_TAG = ".unreadable-"


class UnreadableCheckpointError(RuntimeError):
    """A checkpoint that cannot be restored: `step`, `path` and the first line of the cause."""

    def __init__(self, step: int, path: str, cause: str):
        self.step, self.path, self.cause = step, str(path), cause
        super().__init__(f"checkpoint step {step} at {path} is unreadable: {cause}")


class CheckpointMismatchError(ValueError):
    """A readable checkpoint that does not fit this run (another model, trainable set or data
    order): not damage, so never set aside; the message names what differs."""


def is_remote(path: str | epath.Path) -> bool:
    """Whether `path` is a bucket URL (gs://, s3://...), where files are objects: no append, no
    atomic rename."""
    return "://" in str(path)


def training_run(path: str) -> tuple[str, int | None] | None:
    """(workdir, step) when `path` is a training run's workdir (step None: its latest) or
    WORKDIR/checkpoints/STEP; None for anything else (e.g. a converted or HF directory)."""
    path = str(path).rstrip("/")
    parent = epath.Path(path).parent
    if parent.name == "checkpoints" and epath.Path(path).name.isdigit():
        return str(parent.parent), int(epath.Path(path).name)
    if (epath.Path(path) / "checkpoints").is_dir():
        return path, None
    return None


def checkpoint_dir(workdir: str) -> str:
    """`WORKDIR/checkpoints`; bucket URLs (gs://...) are kept as they are."""
    root = epath.Path(workdir) if is_remote(workdir) else epath.Path(workdir).absolute()
    return str(root / "checkpoints")


def step_dir(workdir: str, step: int) -> str:
    """`WORKDIR/checkpoints/<step>`."""
    return str(epath.Path(checkpoint_dir(workdir)) / str(step))


def _is_committed(path: epath.Path) -> bool:
    # Local saves are renamed into place when complete; on a bucket only the marker says so.
    return not is_remote(path) or (path / COMMIT_MARKER).exists()


def finalized_steps(workdir: str) -> list[int]:
    """Steps of the complete checkpoints in a workdir, ascending (no Orbax manager needed).

    In-progress saves (`<step>.orbax-checkpoint-tmp*`, or on a bucket a step directory without
    the commit marker) and moved-aside steps are skipped.
    """
    directory = epath.Path(checkpoint_dir(workdir))
    if not directory.is_dir():
        return []
    return sorted(
        int(path.name)
        for path in directory.iterdir()
        if path.name.isdigit() and path.is_dir() and _is_committed(path)
    )


def check_step(workdir: str, step: int, items: Sequence[str] = ITEMS) -> str | None:
    """Why step `step` cannot be restored, judged without reading arrays; None if it looks whole.

    Looks for the step directory, its commit (see `finalized_steps`), each of `items`, and each
    array item's Orbax metadata (`_METADATA`, `manifest.ocdbt`). A data file that is truncated or
    deleted is only found by restoring (`restore`, `restore_params`, `reading`).
    """
    path = epath.Path(step_dir(workdir, step))
    if not path.is_dir():
        return "no such checkpoint directory"
    if not _is_committed(path):
        return f"no {COMMIT_MARKER}: the save was interrupted"
    for item in items:
        if not (path / item).is_dir():
            return f"item {item}/ is missing"
        if item in ARRAY_ITEMS:
            for name in ("_METADATA", "manifest.ocdbt"):
                if not (path / item / name).exists():
                    return f"{item}/{name} is missing"
    return None


def first_cause(error: BaseException) -> str:
    """`Type: first line` of the innermost error in `error`'s chain: Orbax wraps a TensorStore
    error (e.g. `OUT_OF_RANGE ... not valid for value of size 100`) in a page-long message."""
    seen = set()
    while (error.__cause__ or error.__context__) is not None and id(error) not in seen:
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    lines = str(error).strip().splitlines() or [""]
    return f"{type(error).__name__}: {lines[0]}"


@contextlib.contextmanager
def reading(workdir: str, step: int) -> Iterator[None]:
    """Turn any error raised while reading step `step` into an `UnreadableCheckpointError`.

    For readers that restore items themselves (an eval job restoring the saved config).
    """
    try:
        yield
    except UnreadableCheckpointError:
        raise
    except Exception as error:
        raise UnreadableCheckpointError(
            step, step_dir(workdir, step), first_cause(error)
        ) from error


def move_aside(workdir: str, step: int) -> str:
    """Rename step `step` to `<step>.unreadable-<time>` (kept for inspection); returns the new
    path. Call from process 0 only."""
    source = epath.Path(step_dir(workdir, step))
    target = source.parent / f"{step}{UNREADABLE_TAG}{int(time.time())}"
    source.rename(target)
    return str(target)


def training_done(workdir: str) -> bool:
    """Whether the training job has written FINAL_MARKER into `workdir`."""
    return (epath.Path(workdir) / FINAL_MARKER).exists()


def mark_training_done(workdir: str) -> None:
    """Write FINAL_MARKER (call from process 0 only, after the last checkpoint is saved)."""
    (epath.Path(workdir) / FINAL_MARKER).write_text("")


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
        # Temporary directories of saves a crash interrupted are deleted by the next writer.
        cleanup_tmp_directories=not read_only,
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


def _path_name(path: tuple) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def _shapes(tree: Any) -> list[tuple[str, tuple[int, ...]]]:
    return [(_path_name(p), tuple(x.shape)) for p, x in jax.tree_util.tree_leaves_with_path(tree)]


def mismatches(manager: ocp.CheckpointManager, step: int, abstract: dict[str, Any]) -> list[str]:
    """How the arrays saved at `step` differ from `abstract` ({item: tree of ShapeDtypeStruct}),
    from Orbax's metadata alone: parameters by name, the optimizer state leaf by leaf."""
    metadata = manager.item_metadata(step)
    found = []
    for item, tree in abstract.items():
        stored, wanted = _shapes(metadata[item]), _shapes(tree)
        if item == "params":
            stored_by, wanted_by = dict(stored), dict(wanted)
            for name in sorted(stored_by.keys() | wanted_by.keys()):
                if stored_by.get(name) != wanted_by.get(name):
                    found.append(
                        f"params/{name} is {stored_by.get(name) or 'absent'} there, "
                        f"{wanted_by.get(name) or 'absent'} in this run's model"
                    )
        elif len(stored) != len(wanted):
            found.append(
                f"{item} holds {len(stored)} arrays there, {len(wanted)} in this run "
                "(config.train.trainable changed?)"
            )
        else:
            found += [
                f"{item}/{name} is {there} there, {here} in this run"
                for (_, there), (name, here) in zip(stored, wanted)
                if there != here
            ]
    return found


def _data_state(path: epath.Path, data_iterator: Any) -> tuple[epath.Path | None, str | None]:
    """(the state file this process restores its data iterator from when the step was saved by
    another number of processes, else None; why the saved data state does not fit, else None).

    The data state is global (data_pipelines/global_order: every process saved the same next
    example index), so process i of N restores from process i mod M's file of the M that saved
    it (its bad-example counts); a state of another data order or format is refused."""
    directory = path / "data_iterator"
    index, count = jax.process_index(), jax.process_count()
    own = directory / f"process_{index}-of-{count}.json"
    files = [own] if own.exists() else sorted(directory.glob("process_*-of-*.json"))
    if not files:
        return None, f"data_iterator/ holds no process_*-of-*.json for {count} processes"
    states = [json.loads(file.read_text()) for file in files]
    saved_count = int(files[0].name.split("-of-")[-1].removesuffix(".json"))
    mismatch = getattr(data_iterator, "mismatch", lambda state: "a per-process data state")
    problem = mismatch(states[0])
    if problem is None and len({state["next_index"] for state in states}) > 1:
        problem = "the processes saved different data positions"
    if problem:
        return None, f"data_iterator (saved by {saved_count} processes): {problem}"
    if own.exists():
        return None, None
    return directory / f"process_{index % saved_count}-of-{saved_count}.json", None


def restore(
    manager: ocp.CheckpointManager,
    step: int,
    abstract_params: Any,
    abstract_opt_state: Any | None,
    data_iterator: Any | None,
) -> dict[str, Any]:
    """Restore onto the shardings carried by the abstract trees (any mesh shape).

    `abstract_*` are trees of `jax.ShapeDtypeStruct` with shardings; `None` skips an item. The
    data iterator's state restores on any number of processes (see `_data_state`). Returns
    {item: restored}. Raises `UnreadableCheckpointError` when the step is incomplete or a restore
    fails, and `CheckpointMismatchError` when it is readable but saved for another model,
    trainable set or data order.
    """
    items = {"params": ocp.args.StandardRestore(abstract_params)}
    abstract = {"params": abstract_params}
    if abstract_opt_state is not None:
        items["opt_state"] = ocp.args.StandardRestore(abstract_opt_state)
        abstract["opt_state"] = abstract_opt_state
    workdir = str(epath.Path(manager.directory).parent)
    path = step_dir(workdir, step)
    wanted = tuple(items) + (("data_iterator",) if data_iterator is not None else ())
    problem = check_step(workdir, step, wanted)
    if problem:
        raise UnreadableCheckpointError(step, path, problem)
    with reading(workdir, step):
        found = mismatches(manager, step, abstract)
        moved_state, problem = (
            _data_state(epath.Path(path), data_iterator)
            if data_iterator is not None
            else (None, None)
        )
    if problem:
        found.append(problem)
    elif data_iterator is not None and moved_state is None:
        items["data_iterator"] = grain.checkpoint.CheckpointRestore(data_iterator)
    if found:
        more = f" (and {len(found) - 3} more)" if len(found) > 3 else ""
        raise CheckpointMismatchError(
            f"checkpoint step {step} at {path} does not fit this run: "
            + "; ".join(found[:3])
            + more
        )
    with reading(workdir, step):
        restored = dict(manager.restore(step, args=ocp.args.Composite(**items)))
        if moved_state is not None:  # saved by another number of processes
            data_iterator.set_state(json.loads(moved_state.read_text()))
            restored["data_iterator"] = data_iterator
    return restored


def restore_params(
    workdir: str, step: int | None = None, abstract_params: Any | None = None
) -> tuple[int, Any, dict]:
    """(step, params, config dict) of a run's checkpoint; the latest if `step` is None.

    Without `abstract_params` the arrays are restored as Orbax saved them (on this host's default
    device); with it, onto its shapes, dtypes and shardings. Raises `UnreadableCheckpointError`
    when the step is incomplete or a restore fails (an eval job records it and goes on), and
    `CheckpointMismatchError` when `abstract_params` is another model's.
    """
    manager = make_manager(workdir, read_only=True)
    try:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint under {checkpoint_dir(workdir)}")
        problem = check_step(workdir, step, ("params", "config"))
        if problem:
            raise UnreadableCheckpointError(step, step_dir(workdir, step), problem)
        target = (
            ocp.args.StandardRestore(abstract_params)
            if abstract_params is not None
            else ocp.args.StandardRestore()
        )
        with reading(workdir, step):
            found = (
                []
                if abstract_params is None
                else mismatches(manager, step, {"params": abstract_params})
            )
        if found:
            raise CheckpointMismatchError(
                f"checkpoint step {step} at {step_dir(workdir, step)} does not fit the model: "
                + "; ".join(found[:3])
            )
        with reading(workdir, step):
            restored = manager.restore(
                step, args=ocp.args.Composite(params=target, config=ocp.args.JsonRestore())
            )
    finally:
        manager.close()
    return step, restored["params"], restored["config"]


def abstract_like(tree: Any, shardings: Any) -> Any:
    """`jax.ShapeDtypeStruct`s of `tree`'s leaves carrying the matching leaves of `shardings`."""
    return jax.tree_util.tree_map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )
