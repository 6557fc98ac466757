"""Apply a conversion table to a flat torch-style state dict and produce Flax parameters.

Every source tensor is consumed by exactly one rule, declared an alias of another key (tied copies,
checked equal), or declared unused; anything else, any parameter left without a source and any
shape mismatch stops the conversion with a `ConversionError` that names the keys and shapes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util

from ib_jax.convert.rules import Rule
from ib_jax.models.configs import ModelConfig


class ConversionError(ValueError):
    pass


def abstract_params(config: ModelConfig) -> dict[str, Any]:
    """Shapes of the model's parameters in the unscanned layout, without allocating them."""
    import dataclasses

    import jax.numpy as jnp

    from ib_jax.models.instructblip import InstructBlip

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
    return nn.unbox(shapes)


def fuse_lavis_qkv_bias(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """LAVIS keeps q_bias and v_bias; the fused qkv bias is cat(q_bias, 0, v_bias)."""
    state = dict(state)
    for key in [k for k in state if k.endswith(".attn.q_bias")]:
        prefix = key[: -len("q_bias")]
        v_key = prefix + "v_bias"
        if v_key not in state:
            raise ConversionError(f"{key} has no matching {v_key}")
        q_bias, v_bias = state.pop(key), state.pop(v_key)
        state[prefix + "qkv_bias"] = np.concatenate([q_bias, np.zeros_like(q_bias), v_bias])
    return state


def _target_path(rule: Rule, match: re.Match, config: ModelConfig) -> str:
    fields = match.groupdict()
    if "layer" in fields:
        layer = int(fields["layer"])
        freq = config.qformer.cross_attention_frequency
        fields.update(layer=layer, group=layer // freq, sub=layer % freq)
    return rule.target.format(**fields)


def convert_state_dict(
    state: Mapping[str, np.ndarray],
    rules: list[Rule],
    config: ModelConfig,
    aliases: Mapping[str, str] | None = None,
    unused: list[str] | None = None,
) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """Flat {torch key: array} -> (nested Flax params, report {"aliases": [...], "unused": [...]})."""
    expected = traverse_util.flatten_dict(abstract_params(config), sep="/")
    compiled = [(re.compile(rule.pattern + r"$"), rule) for rule in rules]
    converted: dict[str, np.ndarray] = {}
    sources: dict[str, str] = {}
    report: dict[str, list[str]] = {"aliases": [], "unused": []}
    problems: list[str] = []

    for key, value in state.items():
        if _is_alias(key, state, aliases or {}, report, problems) or _is_unused(
            key, unused or [], config, report
        ):
            continue
        match = next(((m, rule) for regex, rule in compiled if (m := regex.match(key))), None)
        if match is None:
            problems.append(
                f"unexpected key {key} {tuple(value.shape)}: no conversion rule matches it"
            )
            continue
        target = _target_path(match[1], match[0], config)
        if target not in expected:
            problems.append(f"key {key} maps to {target}, which this config's model does not have")
            continue
        if target in converted:
            problems.append(f"keys {sources[target]} and {key} both map to {target}")
            continue
        want = tuple(expected[target].shape)
        try:
            array = match[1].hook(np.asarray(value), want)
        except ValueError as err:
            problems.append(
                f"shape mismatch for {key}: {tuple(value.shape)} cannot become {target} {want} ({err})"
            )
            continue
        if array.shape != want:
            problems.append(
                f"shape mismatch for {key}: {tuple(value.shape)} -> {target} needs {want}"
            )
            continue
        converted[target], sources[target] = array.astype(np.dtype(expected[target].dtype)), key

    missing = sorted(set(expected) - set(converted))
    problems += [
        f"missing: no source key for parameter {path} {tuple(expected[path].shape)}"
        for path in missing
    ]
    if problems:
        raise ConversionError(f"{len(problems)} conversion problem(s):\n  " + "\n  ".join(problems))
    return traverse_util.unflatten_dict(converted, sep="/"), report


def _is_alias(
    key: str, state: Mapping[str, np.ndarray], aliases: Mapping[str, str], report, problems
) -> bool:
    for pattern, original in aliases.items():
        if re.fullmatch(pattern, key):
            if original in state and not np.array_equal(
                np.asarray(state[original]), np.asarray(state[key])
            ):
                problems.append(f"{key} should be a tied copy of {original} but differs from it")
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
