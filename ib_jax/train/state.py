"""Training state: trainable parameters with their optimizer state, and frozen parameters apart.

Gradients and optimizer moments exist only for the trainable subtree (by default the Q-Former,
query tokens, language projection and ln_vision; with `config.model.lora`, the LoRA parameters
as well, which then keep fp32 masters under bf16_mixed). Frozen towers are held in
`frozen_dtype` (bf16 by default) and are never donated, differentiated or checkpointed twice.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from ib_jax.contract.config import as_patterns
from ib_jax.models import lora


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
    """Nested params -> (trainable, frozen) nested dicts. Trainable: the LoRA leaves
    (ib_jax/models/lora.py) and whatever the regexes (`config.train.trainable`, searched in
    "/"-joined paths) name. A regex that matches no parameter is refused, as is an empty set."""
    patterns = as_patterns(patterns)
    flat = traverse_util.flatten_dict(params, sep="/")
    unmatched = [p for p in patterns if not any(re.search(p, k) for k in flat)]
    if unmatched or not patterns and not any(lora.is_lora_path(k) for k in flat):
        raise ValueError(
            f"config.train.trainable {list(patterns)}: "
            + (f"{unmatched} match no parameter" if unmatched else "trains nothing")
            + f"; paths look like {_examples(flat)} (all of them: python -m ib_jax.convert "
            "--describe=CONFIG)"
        )
    trainable = {k: v for k, v in flat.items() if lora.is_lora_path(k) or is_trainable(k, patterns)}
    frozen = {k: v for k, v in flat.items() if k not in trainable}
    return traverse_util.unflatten_dict(trainable, sep="/"), traverse_util.unflatten_dict(
        frozen, sep="/"
    )


def _examples(flat: dict) -> list[str]:
    """A few real parameter paths, one per top-level tower."""
    first: dict[str, str] = {}
    for path in sorted(flat):
        first.setdefault(path.split("/")[0], path)
    return list(first.values())


def _count(tree: Any) -> tuple[int, int]:
    """(elements, bytes) of the array / ShapeDtypeStruct leaves of `tree`."""
    leaves = [x for x in jax.tree_util.tree_leaves(tree) if hasattr(x, "shape")]
    sizes = [(math.prod(x.shape), math.prod(x.shape) * jnp.dtype(x.dtype).itemsize) for x in leaves]
    return sum(s for s, _ in sizes), sum(b for _, b in sizes)


def describe_split(state: TrainState, frozen: Any) -> str:
    """One line for the start of a run: trainable and frozen parameter counts (and bytes) and the
    optimizer state's bytes. Works on arrays or on the program's abstract ShapeDtypeStructs."""
    trained, trained_bytes = _count(state.trainable)
    held, held_bytes = _count(frozen)
    lora_count = _count(
        [
            v
            for k, v in traverse_util.flatten_dict(state.trainable, sep="/").items()
            if lora.is_lora_path(k)
        ]
    )[0]
    _, opt_bytes = _count(state.opt_state)
    share = 100.0 * trained / max(trained + held, 1)
    return (
        f"parameters: {trained:,d} trainable ({share:.2f}%, {_size(trained_bytes)}"
        + (f", {lora_count:,d} of them LoRA" if lora_count else "")
        + f"), {held:,d} frozen ({_size(held_bytes)}); optimizer state {_size(opt_bytes)}"
    )


def _size(nbytes: int) -> str:
    """Bytes in the largest binary unit that keeps a number >= 1 (KiB at least)."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20)):
        if nbytes >= scale:
            return f"{nbytes / scale:,.1f} {unit}"
    return f"{nbytes / 2**10:,.1f} KiB"


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


def complete_lora(params: Any, init: Callable[[jax.Array], Any], rng: jax.Array) -> Any:
    """Pretrained parameters (`config.init`) for a model with `config.model.lora`: the LoRA
    leaves they lack get their initial values (A random, B zero: the pretrained model's outputs
    at step 0); LoRA leaves of another rank, or that this model does not have, are refused.
    `init` is the program's rng -> boxed params; only the missing leaves are computed."""
    flat = traverse_util.flatten_dict(params, sep="/")
    model = traverse_util.flatten_dict(jax.eval_shape(init, rng), sep="/")
    wanted = {k: v for k, v in model.items() if lora.is_lora_path(k)}
    extra = [k for k in flat if lora.is_lora_path(k) and k not in wanted]
    wrong = [
        f"{k} {tuple(flat[k].shape)} (the model's: {tuple(getattr(v, 'value', v).shape)})"
        for k, v in wanted.items()
        if k in flat and tuple(flat[k].shape) != tuple(getattr(v, "value", v).shape)
    ]
    if extra or wrong:
        raise ValueError(
            "config.init's parameters hold LoRA leaves config.model.lora does not make: "
            + "; ".join((extra + wrong)[:4])
            + " (set config.model.lora as the converted directory's config.json has it, or fold "
            "them in with python -m ib_jax.export --merge_lora)"
        )
    missing = sorted(k for k in wanted if k not in flat)
    if not missing:
        return params

    def fresh(key: jax.Array) -> dict[str, Any]:
        """Only the missing leaves: XLA drops the rest of the model's init."""
        values = traverse_util.flatten_dict(nn.unbox(init(key)), sep="/")
        return {k: values[k] for k in missing}

    flat.update(jax.jit(fresh)(rng))
    return traverse_util.unflatten_dict(flat, sep="/")
