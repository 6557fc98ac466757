"""Match a conversion table against a lazily read state dict: a `Plan` of (target <- source, hook).

Every source tensor is consumed by exactly one rule, declared an alias of another key (tied copies,
checked equal), or declared unused; anything else, any parameter left without a source and any
shape mismatch stops the conversion with a `ConversionError` that names the keys, shapes and files.
All of this is decided from shapes before any tensor is converted (aliases excepted: they are
compared), so bad input stops a conversion before it writes anything. `write.py` then reads the
plan's tensors group by group.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from ib_jax import sharding
from ib_jax.contract.model import ModelConfig
from ib_jax.convert.readers import Entry, LazyState
from ib_jax.convert.rules import Rule
from ib_jax.models.instructblip import InstructBlip


class ConversionError(ValueError):
    pass


def abstract_params(config: ModelConfig) -> dict[str, Any]:
    """Shapes of the model's parameters in the unscanned layout, without allocating them."""
    import jax.numpy as jnp

    config = dataclasses.replace(config, scan_layers=False, remat_policy="none")
    size = config.vision.image_size
    model = InstructBlip(config)
    args = (
        jnp.zeros((1, size, size, 3)),
        jnp.zeros((1, 2), jnp.int32),
        jnp.ones((1, 2), jnp.int32),
        jnp.zeros((1, 2), jnp.int32),
        jnp.ones((1, 2), jnp.int32),
        jnp.zeros((1, 2), jnp.int32),
    )
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), *args)["params"])
    # Not nn.unbox: under an active mesh (the trainer's pretrained init) it would apply sharding
    # constraints to these shape structs and fail.
    return sharding.unboxed(shapes)


def fuse_lavis_qkv_bias(state: LazyState) -> None:
    """LAVIS keeps q_bias and v_bias; the fused qkv bias is cat(q_bias, 0, v_bias) (in place)."""
    for key in [k for k in state if k.endswith(".attn.q_bias")]:
        prefix = key[: -len("q_bias")]
        v_key = prefix + "v_bias"
        if v_key not in state:
            raise ConversionError(f"{key} has no matching {v_key} {state[key].where(key)}")
        q_bias, v_bias = state.pop(key), state.pop(v_key)

        def fused(q=q_bias, v=v_bias):
            q_value = q.read()
            return np.concatenate([q_value, np.zeros_like(q_value), v.read()])

        shape = (q_bias.shape[0] * 3,) + q_bias.shape[1:]
        state.add(prefix + "qkv_bias", dataclasses.replace(q_bias, shape=shape, read=fused))


@dataclasses.dataclass(frozen=True)
class Assignment:
    """One target parameter: read `key`, apply the rule's hook, cast to the target dtype."""

    key: str
    entry: Entry
    rule: Rule
    shape: tuple[int, ...]
    dtype: np.dtype

    def read(self) -> np.ndarray:
        source = np.asarray(self.entry.read())
        array = self.rule.hook(source, self.shape)
        if array.shape != self.shape:
            raise ConversionError(
                f"{self.key} became {array.shape}, not {self.shape} {self.entry.where(self.key)}"
            )
        array = array.astype(self.dtype, copy=False)
        # A view would keep its source alive (for a torch file: the whole memory map).
        return array.copy() if np.may_share_memory(array, source) else array


@dataclasses.dataclass
class Plan:
    """{flat target path: Assignment} for every parameter of `config`'s model (unscanned names)."""

    config: ModelConfig
    assignments: dict[str, Assignment]
    report: dict[str, list[str]]


def _target_path(rule: Rule, match: re.Match, config: ModelConfig) -> str:
    fields = match.groupdict()
    if "layer" in fields:
        layer = int(fields["layer"])
        freq = config.qformer.cross_attention_frequency
        fields.update(layer=layer, group=layer // freq, sub=layer % freq)
    return rule.target.format(**fields)


def plan(
    state: LazyState,
    rules: list[Rule],
    config: ModelConfig,
    aliases: Mapping[str, str] | None = None,
    unused: list[str] | None = None,
) -> Plan:
    """Match every source key; raise one `ConversionError` listing every problem found."""
    expected = traverse_util.flatten_dict(abstract_params(config), sep="/")
    compiled = [(re.compile(rule.pattern + r"$"), rule) for rule in rules]
    assignments: dict[str, Assignment] = {}
    report: dict[str, list[str]] = {"aliases": [], "unused": []}
    problems: list[str] = []
    refused: set[str] = set()

    for key in state:
        entry = state[key]
        if _is_alias(key, state, aliases or {}, report, problems) or _is_unused(
            key, unused or [], config, report
        ):
            continue
        match = next(((m, rule) for regex, rule in compiled if (m := regex.match(key))), None)
        if match is None:
            problems.append(
                f"unexpected key {key} {entry.shape}: no conversion rule matches it "
                + entry.where(key)
            )
            continue
        rule = match[1]
        target = _target_path(rule, match[0], config)
        if target not in expected:
            problems.append(
                f"key {key} maps to {target}, which this config's model does not have "
                + entry.where(key)
            )
            continue
        if target in assignments:
            problems.append(
                f"keys {assignments[target].key} and {key} both map to {target} "
                f"{assignments[target].entry.where(assignments[target].key)} {entry.where(key)}"
            )
            continue
        want = tuple(expected[target].shape)
        problem = rule.check(entry.shape, want)
        if problem:
            refused.add(target)  # reported here, not again as missing
            problems.append(
                f"shape mismatch for {key}: {entry.shape} cannot become {target} {want} "
                f"({problem}) {entry.where(key)}"
            )
            continue
        dtype = np.dtype(expected[target].dtype)
        assignments[target] = Assignment(key, entry, rule, want, dtype)

    missing = sorted(set(expected) - set(assignments) - refused)
    problems += [
        f"missing: no source key for parameter {path} {tuple(expected[path].shape)}"
        for path in missing
    ]
    if problems:
        raise ConversionError(f"{len(problems)} conversion problem(s):\n  " + "\n  ".join(problems))
    return Plan(config, assignments, report)


def _is_alias(key: str, state: LazyState, aliases: Mapping[str, str], report, problems) -> bool:
    for pattern, original in aliases.items():
        if re.fullmatch(pattern, key):
            # Tied copies are compared, not trusted: reading two embedding tables costs little.
            if original in state and not np.array_equal(state.read(original), state.read(key)):
                problems.append(
                    f"{key} should be a tied copy of {original} but differs from it "
                    + state[key].where(key)
                )
            report["aliases"].append(f"{key} = {original}")
            return True
    return False


def _is_unused(key: str, unused: list[str], config: ModelConfig, report) -> bool:
    for pattern in unused:
        match = re.fullmatch(pattern, key)
        if match and (
            "layer" not in match.groupdict() or int(match["layer"]) >= config.vision.num_layers
        ):
            report["unused"].append(key)
            return True
    return False


_STACKED = re.compile(r"^(layers|groups)_(\d+)$")


def stacked_name(path: str) -> tuple[str, int] | None:
    """`a/layers_3/b` -> (`a/layers/b`, 3); None for a path outside a layer stack."""
    parts = path.split("/")
    for i, part in enumerate(parts):
        match = _STACKED.match(part)
        if match:
            return "/".join(parts[:i] + [match[1]] + parts[i + 1 :]), int(match[2])
    return None


def stack_scanned(params: dict[str, Any]) -> dict[str, Any]:
    """Unscanned layout (`layers_0`, `layers_1`, ...) -> scanned (`layers` with a leading axis)."""
    if not isinstance(params, dict):
        return params
    out, stacks = {}, {}
    for name, value in params.items():
        match = _STACKED.match(name)
        if match:
            stacks.setdefault(match[1], {})[int(match[2])] = stack_scanned(value)
        else:
            out[name] = stack_scanned(value)
    for name, members in stacks.items():
        ordered = [members[i] for i in range(len(members))]
        out[name] = jax.tree_util.tree_map(lambda *xs: np.stack(xs), *ordered)
    return out


def unstack_scanned(params: dict[str, Any]) -> dict[str, Any]:
    """Inverse of `stack_scanned`."""
    if not isinstance(params, dict):
        return params
    out = {}
    for name, value in params.items():
        if name in ("layers", "groups"):
            length = jax.tree_util.tree_leaves(value)[0].shape[0]
            for i in range(length):
                out[f"{name}_{i}"] = unstack_scanned(
                    jax.tree_util.tree_map(lambda x, i=i: x[i], value)
                )
        else:
            out[name] = unstack_scanned(value)
    return out
