"""LoRA: a low-rank branch beside the kernels `config.model.lora.targets` names.

A targeted `layers.DenseGeneral` with kernel W [*in, *out] gets two more parameters, `lora_a`
[*in, r] and `lora_b` [r, *out], and computes x @ W + alpha / r * (dropout(x) @ A) @ B, as peft's
`LoraLayer` does (`use_rslora` off). A starts like peft's (kaiming-uniform with a = sqrt(5):
U(-1/sqrt(fan_in), 1/sqrt(fan_in))), B at zero, so step 0 is the base model. Both keep the base
kernel's logical axes on the side they share with it (A: input axes x None, B: None x output
axes), so they shard like their kernel; under `nn.scan` they get the `layers` axis like every
parameter. They are stored in `param_dtype` (fp32 masters under bf16_mixed: they are trainable,
ib_jax/train/state.py) and enter the matmul in the compute dtype.

Which Dense is targeted is a property of the whole model (`ModelConfig.lora`), decided on the
Dense's own path, so the towers do not pass it down: `InstructBlip` derives from `LoraScope`,
which holds its config in a context variable while it is initialised or applied, and
`DenseGeneral` reads it there (`settings`). A tower used on its own has no LoRA.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
import re
from collections.abc import Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from ib_jax.contract.model import LoraConfig

Array = jax.Array
LEAVES = ("lora_a", "lora_b")
LEAF_PATTERN = r"/lora_[ab]$"  # a parameter path of a LoRA leaf ("/"-joined)
_STACKS = ("layers", "groups")  # the names of scanned stacks (a leading parameter axis each)

_ACTIVE: contextvars.ContextVar[LoraConfig | None] = contextvars.ContextVar(
    "ib_jax_lora", default=None
)


@contextlib.contextmanager
def active(config: LoraConfig | None) -> Iterator[None]:
    """Dense modules initialised or applied inside get LoRA branches per `config`."""
    token = _ACTIVE.set(config if config is not None and config.rank > 0 else None)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


class LoraScope:
    """Mixin for the root module (whose `config.lora` is a LoraConfig): `init`/`apply` run with
    that config active. A plain class, so linen does not wrap these methods."""

    def init_with_output(self, *args: Any, **kwargs: Any) -> Any:
        """`nn.Module.init_with_output` (and so `init`) with the LoRA config active; a target
        that matches no Dense is refused here."""
        with active(self.config.lora):
            out, variables = super().init_with_output(*args, **kwargs)
        if kwargs.get("method") is None:  # a whole model was made (not one method's share)
            check_targets(self.config.lora, variables.get("params", {}))
        return out, variables

    def apply(self, *args: Any, **kwargs: Any) -> Any:
        """`nn.Module.apply` with the LoRA config active."""
        with active(self.config.lora):
            return super().apply(*args, **kwargs)


def is_lora_path(path: str) -> bool:
    """Whether a "/"-joined parameter path is a LoRA leaf."""
    return re.search(LEAF_PATTERN, path) is not None


def _first(pattern: Sequence[tuple[str, Any]], path: str) -> Any:
    return next((value for regex, value in pattern if re.search(regex, path)), None)


def rank_and_scaling(config: LoraConfig, module_path: str) -> tuple[int, float] | None:
    """(rank, alpha / rank) of the Dense at `module_path`, or None when it is not targeted."""
    if config.rank <= 0 or not any(re.search(t, module_path) for t in config.targets):
        return None
    rank = _first(config.rank_pattern, module_path) or config.rank
    alpha = _first(config.alpha_pattern, module_path)
    alpha = config.alpha if alpha is None else alpha
    return rank, alpha / rank


def settings(module: nn.Module) -> tuple[int, float, float] | None:
    """(rank, scaling, dropout) for a Dense module under the active config, else None."""
    config = _ACTIVE.get()
    if config is None or module.scope is None:
        return None
    found = rank_and_scaling(config, "/".join(module.scope.path))
    return None if found is None else (*found, config.dropout)


def _a_init(num_inputs: int):
    # peft: kaiming_uniform_(a=sqrt(5)) over torch's [r, in] -> bound 1/sqrt(in); variance 1/(3 in).
    return nn.initializers.variance_scaling(
        1.0 / 3.0, "fan_in", "uniform", in_axis=tuple(range(num_inputs)), out_axis=-1
    )


def branch(
    module: nn.Module,
    inputs: Array,
    axis: tuple[int, ...],
    features: tuple[int, ...],
    kernel_axes: tuple,
    rank: int,
    scaling: float,
    dropout: float,
) -> Array:
    """scaling * (dropout(inputs) @ A) @ B: inputs [..., *in] contracted over `axis` ->
    [..., *features] in `module.out_dtype or module.dtype`. Creates `lora_a` and `lora_b` in
    `module` (a DenseGeneral, whose dtype/param_dtype/precision it uses)."""
    in_shape = tuple(inputs.shape[a] for a in axis)
    n_in = len(in_shape)
    a = module.param(
        "lora_a",
        nn.with_logical_partitioning(_a_init(n_in), (*kernel_axes[:n_in], None)),
        (*in_shape, rank),
        module.param_dtype,
    )
    b = module.param(
        "lora_b",
        nn.with_logical_partitioning(nn.initializers.zeros, (None, *kernel_axes[n_in:])),
        (rank, *features),
        module.param_dtype,
    )
    x = jnp.asarray(inputs, module.dtype)
    if dropout > 0 and module.has_rng("dropout"):
        keep = jax.random.bernoulli(module.make_rng("dropout"), 1.0 - dropout, x.shape)
        x = jnp.where(keep, x / (1.0 - dropout), 0).astype(module.dtype)
    contract = ((axis, tuple(range(n_in))), ((), ()))
    low = jax.lax.dot_general(
        x, jnp.asarray(a, module.dtype), contract, precision=module.precision
    )  # [..., r], the contracted axes gone, the rank last
    low = low * jnp.asarray(scaling, low.dtype)
    return jax.lax.dot_general(
        low,
        jnp.asarray(b, module.dtype),
        (((low.ndim - 1,), (0,)), ((), ())),
        precision=module.precision,
        preferred_element_type=module.out_dtype,
    )


def check_targets(config: LoraConfig, params: Any) -> None:
    """Every target regex must have matched a Dense (one that now holds `lora_a`)."""
    if config.rank <= 0:
        return
    # Boxed leaves are not dicts: flattening stops at them (no unbox: it may constrain shardings).
    paths = list(traverse_util.flatten_dict(params, sep="/"))
    targeted = [p.rsplit("/", 1)[0] for p in paths if p.endswith("/lora_a")]
    dense = sorted({p.rsplit("/", 1)[0] for p in paths if p.endswith("/kernel")})
    unmatched = [t for t in config.targets if not any(re.search(t, m) for m in targeted)]
    if unmatched:
        by_name = {m.rsplit("/", 1)[-1]: m for m in dense}  # one per kind of Dense
        examples = sorted(by_name.values())[:8]
        raise ValueError(
            f"config.model.lora.targets {unmatched} match no Dense of this model; Dense paths "
            f"look like {examples} (all: python -m ib_jax.convert --describe=CONFIG)"
        )


def _delta(a: np.ndarray, b: np.ndarray, stacked: int) -> np.ndarray:
    """A [*S, *in, r] @ B [*S, r, *out] -> [*S, *in, *out] with `stacked` leading stack axes S."""
    lead = a.shape[:stacked]
    in_shape, out_shape = a.shape[stacked:-1], b.shape[stacked + 1 :]
    a2 = a.reshape(*lead, math.prod(in_shape), a.shape[-1]).astype(np.float32)
    b2 = b.reshape(*lead, b.shape[stacked], math.prod(out_shape)).astype(np.float32)
    return np.matmul(a2, b2).reshape(*lead, *in_shape, *out_shape)


def merge(params: dict, config: LoraConfig) -> dict:
    """Fold every LoRA pair into its kernel (W + alpha / r * A @ B, in float32, cast back to the
    kernel's dtype) and drop the LoRA leaves; the layout (scanned or not) is kept. Host arrays."""
    flat = traverse_util.flatten_dict(params, sep="/")
    out = {p: v for p, v in flat.items() if not is_lora_path(p)}
    for path in [p for p in flat if p.endswith("/lora_a")]:
        module = path.rsplit("/", 1)[0]
        found = rank_and_scaling(config, module)
        if found is None:
            raise ValueError(f"{path}: config.model.lora targets no Dense at {module}")
        kernel = np.asarray(flat[f"{module}/kernel"])
        stacked = sum(part in _STACKS for part in module.split("/"))
        delta = _delta(np.asarray(flat[path]), np.asarray(flat[f"{module}/lora_b"]), stacked)
        out[f"{module}/kernel"] = (kernel.astype(np.float32) + found[1] * delta).astype(
            kernel.dtype
        )
    return traverse_util.unflatten_dict(out, sep="/")


def without(config: Any) -> Any:
    """A ModelConfig with LoRA off (what a merged model is)."""
    return dataclasses.replace(config, lora=LoraConfig())
