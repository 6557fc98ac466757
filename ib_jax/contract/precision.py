"""The mixed-precision policy: one config field, `config.model.precision`, names every dtype.

| precision    | frozen storage | trainable storage | compute  | always fp32                          |
|--------------|----------------|-------------------|----------|--------------------------------------|
| "fp32"       | float32        | float32           | float32  | everything                           |
| "bf16_mixed" | bfloat16       | float32 (master)  | bfloat16 | norms, attention softmax, log-softmax |
|              |                |                   |          | and loss, gradients, Adam moments     |

"fp32" is for the tiny/demo models and the tests (exact comparison with the reference);
"bf16_mixed" is what the released configs train with. Which leaves are frozen follows
`config.train.trainable` leaf by leaf: with the default set the ViT and the LM are stored and run in
bf16, while ln_vision, the query tokens, the Q-Former and the language projection keep fp32 master
weights (their gradients and Adam moments are fp32 too) and are cast to bf16 where they enter a
matmul (`layers.DenseGeneral`). LayerNorm/RMSNorm statistics, attention logits and softmax
(`layers.dot_product_attention`) and the LM's log-softmax and loss (`losses.py`) run in fp32
whatever the compute dtype; the decode cache holds keys/values in the compute dtype (bf16).

The policy subsumes three older fields, `config.model.dtype` (compute), `config.model.param_dtype`
(storage at init) and `config.train.frozen_dtype`. An empty `precision` keeps them in charge (old
configs and checkpoints); with `precision` set they may be left empty or must agree, otherwise
one error names both fields.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class Policy:
    """Resolved dtypes (names as jnp understands them)."""

    compute: str  # activations and matmul inputs (`config.model.dtype`)
    param: str  # parameters as created by init; trainable leaves stay in it (master weights)
    frozen: str  # frozen leaves' storage on device (`config.train.frozen_dtype`)


POLICIES = {
    "fp32": Policy(compute="float32", param="float32", frozen="float32"),
    "bf16_mixed": Policy(compute="bfloat16", param="float32", frozen="bfloat16"),
}
# What an old config without `precision` meant when a field was absent or empty.
_LEGACY_DEFAULTS = Policy(compute="float32", param="float32", frozen="bfloat16")
_FIELDS = (
    ("compute", "config.model.dtype"),
    ("param", "config.model.param_dtype"),
    ("frozen", "config.train.frozen_dtype"),
)


def _get(section: Mapping | Any, key: str) -> str:
    if section is None:
        return ""
    value = section.get(key, "") if hasattr(section, "get") else getattr(section, key, "")
    return str(value or "")


def resolve(model: Mapping | Any, train: Mapping | Any = None) -> Policy:
    """`config.model` (and `config.train`, for the frozen dtype) -> the Policy they ask for.

    Raises ValueError naming `config.model.precision` for an unknown policy, or naming both
    fields when `precision` is set and an old dtype field disagrees with it."""
    name = _get(model, "precision")
    given = {
        "compute": _get(model, "dtype"),
        "param": _get(model, "param_dtype"),
        "frozen": _get(train, "frozen_dtype"),
    }
    if not name:
        return Policy(**{k: given[k] or getattr(_LEGACY_DEFAULTS, k) for k in given})
    if name not in POLICIES:
        raise ValueError(
            f"config.model.precision={name!r} is not a policy; choose one of {sorted(POLICIES)}"
        )
    policy = POLICIES[name]
    for key, field in _FIELDS:
        want = getattr(policy, key)
        if given[key] and given[key] != want:
            raise ValueError(
                f"config.model.precision={name!r} sets {field} to {want!r}, but {field}="
                f"{given[key]!r}; set only config.model.precision (or clear it to use {field})"
            )
    return policy


def resolve_model_fields(model: dict) -> dict:
    """A `config.model` dict -> the same without `precision`, `dtype`/`param_dtype` resolved
    (what the ModelConfig dataclass holds). The frozen dtype is checked by `frozen_dtype`."""
    model = dict(model)
    policy = resolve(model)
    model.pop("precision", None)
    model["dtype"], model["param_dtype"] = policy.compute, policy.param
    return model


def frozen_dtype(config: Any) -> str:
    """The storage dtype of the frozen parameters for the whole run config."""
    return resolve(config.model, config.get("train")).frozen
