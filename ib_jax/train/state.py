"""Training state: trainable parameters with their optimizer state, and frozen parameters apart.

Gradients and optimizer moments exist only for the trainable subtree (by default the Q-Former,
query tokens, language projection and ln_vision). Frozen towers are held in `frozen_dtype`
(bf16 by default) and are never donated, differentiated or checkpointed twice.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
from flax import traverse_util

from ib_jax.contract.config import as_patterns


@flax.struct.dataclass
class TrainState:
    """What the step donates and returns: `step` (int32 scalar), the trainable parameter subtree
    and the optimizer state of exactly that subtree."""

    step: jax.Array
    trainable: Any
    opt_state: Any


def is_trainable(path: str, patterns: str | Sequence[str]) -> bool:
    """Whether a "/"-joined parameter path matches any of the regexes (`re.search`); `patterns`
    is a list or a comma-separated string (`--config.train.trainable=a,b`)."""
    return any(re.search(pattern, path) for pattern in as_patterns(patterns))


def split_params(params: Any, patterns: str | Sequence[str]) -> tuple[dict, dict]:
    """Nested params -> (trainable, frozen) nested dicts, by regexes over "/"-joined paths."""
    patterns = as_patterns(patterns)
    flat = traverse_util.flatten_dict(params, sep="/")
    trainable = {k: v for k, v in flat.items() if is_trainable(k, patterns)}
    if not trainable:
        raise ValueError(
            f"config.train.trainable {list(patterns)} matches no parameter; paths look like "
            f"{sorted(flat)[:3]}"
        )
    frozen = {k: v for k, v in flat.items() if k not in trainable}
    return traverse_util.unflatten_dict(trainable, sep="/"), traverse_util.unflatten_dict(
        frozen, sep="/"
    )


def merge_params(trainable: dict, frozen: dict) -> dict:
    """The inverse of `split_params`: one nested tree with the leaves of both."""
    flat = traverse_util.flatten_dict(frozen, sep="/")
    flat.update(traverse_util.flatten_dict(trainable, sep="/"))
    return traverse_util.unflatten_dict(flat, sep="/")


def cast_floating(tree: Any, dtype: str) -> Any:
    """Floating leaves (arrays or ShapeDtypeStructs) to `dtype`; others unchanged."""

    def cast(x: Any) -> Any:
        """One leaf, cast if floating (a ShapeDtypeStruct keeps its sharding)."""
        if not jnp.issubdtype(x.dtype, jnp.floating):
            return x
        if isinstance(x, jax.ShapeDtypeStruct):
            return jax.ShapeDtypeStruct(x.shape, jnp.dtype(dtype), sharding=x.sharding)
        return x.astype(dtype)

    return jax.tree_util.tree_map(cast, tree)
