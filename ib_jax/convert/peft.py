"""Hugging Face peft LoRA adapters <-> `config.model.lora` and the LoRA parameters.

An adapter directory holds `adapter_config.json` and `adapter_model.safetensors` with keys
`base_model.model.<module>.lora_A.weight` [r, in] and `.lora_B.weight` [out, r] for each
targeted torch Linear, and `base_model.model.<module>.weight`/`.bias` in full for the modules
named in `modules_to_save`. Nothing here is a second name table: the LoRA rules are derived from
the family's HF rules (`lora_rules`), so `<module>.weight -> <path>/kernel` gives
`<module>.lora_A.weight -> <path>/lora_a` and `lora_B -> lora_b`, with the same `linear` hook
([r, in] -> [*in, r], [out, r] -> [r, *out]); export runs them backwards like every rule.

Reading is strict: the adapter's settings peft has and we do not (DoRA, rsLoRA, LoRA biases,
...) are refused by name, and an adapter key no rule maps stops the conversion with its name
(`core.plan`). The targeted modules, their ranks (from the tensors) and alphas (`lora_alpha`,
`alpha_pattern` matched as peft matches it) become `LoraConfig.targets`/`rank_pattern`/
`alpha_pattern` over our paths, written layer-independently where every layer of a stack is
targeted alike, so the scanned layout reads them too.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
import re
from typing import Any

from ib_jax.contract.model import LoraConfig
from ib_jax.convert import api, core, readers, rules

PREFIX = "base_model.model."
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
# peft settings that change what the adapter computes; only their off values are read.
_OFF = {
    "use_dora": False,
    "use_rslora": False,
    "lora_bias": False,
    "fan_in_fan_out": False,
    "bias": "none",
    "layer_replication": None,
    "alora_invocation_tokens": None,
    "target_parameters": None,
    "trainable_token_indices": None,
    "use_qalora": False,
    "use_bdlora": None,
}
_A, _B = r"\.lora_A\.weight", r"\.lora_B\.weight"


def lora_rules(table: list[rules.Rule]) -> list[rules.Rule]:
    """For every torch Linear rule (`<module>.weight -> <path>/kernel`, hook `linear`) of `table`,
    the two rules of its LoRA pair."""
    out = []
    for rule in table:
        if rule.hook is not rules.linear or not rule.pattern.endswith(r"\.weight"):
            continue
        if not rule.target.endswith("/kernel"):
            continue
        module, path = rule.pattern[: -len(r"\.weight")], rule.target[: -len("/kernel")]
        out += [
            # A [*in, r] comes from torch [r, in]; B [r, *out] from [out, r] (linear's default).
            rules.Rule(
                module + _A,
                path + "/lora_a",
                rules.linear,
                source_shape=lambda s: (s[-1], math.prod(s[:-1])),
            ),
            rules.Rule(module + _B, path + "/lora_b", rules.linear),
        ]
    return out


def read_adapter(directory: str) -> tuple[dict[str, Any], readers.LazyState]:
    """(adapter_config.json, its tensors keyed without `base_model.model.`); settings we do not
    implement are refused by name."""
    config_path, weights_path = (os.path.join(directory, n) for n in (CONFIG_FILE, WEIGHTS_FILE))
    for path in (config_path, weights_path):
        if not os.path.exists(path):
            raise FileNotFoundError(f"--peft {directory}: no {os.path.basename(path)}")
    with open(config_path) as f:
        settings = json.load(f)
    if settings.get("peft_type") != "LORA":
        raise ValueError(f"{config_path}: peft_type {settings.get('peft_type')!r}, not LORA")
    for key, off in _OFF.items():
        if key in settings and settings[key] not in (off, None, [], {}):
            raise ValueError(
                f"{config_path}: {key}={settings[key]!r} is not supported (only {off!r})"
            )
    state = readers.LazyState()
    for key, entry in readers.read_safetensors(weights_path).entries.items():
        if not key.startswith(PREFIX):
            raise ValueError(f"{weights_path}: key {key} does not start with {PREFIX!r}")
        state.add(key[len(PREFIX) :], entry)
    return settings, state


def _pattern_value(pattern: dict[str, Any], module: str, default: Any) -> Any:
    """peft's `get_pattern_key`: an exact key, else the first key matching `(.*\\.)?key$`."""
    if module in pattern:
        return pattern[module]
    for key, value in pattern.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


_STACK = re.compile(r"/(layers|groups)_\d+/")


def _targets(
    found: dict[str, tuple[int, float]], dense: list[str], rank: int, alpha: float
) -> tuple[tuple[str, ...], tuple, tuple]:
    """{our module path: (rank, alpha)} -> (targets, rank_pattern, alpha_pattern): one regex for
    a stack whose every layer is targeted with one (rank, alpha), else one per module."""
    groups = collections.defaultdict(dict)
    for path, value in found.items():
        general = "^" + _STACK.sub(lambda m: f"/{m[1]}(_\\d+)?/", re.escape(path)) + "$"
        groups[general][path] = value
    targets, ranks, alphas = [], [], []
    for general, members in sorted(groups.items()):
        everyone = [p for p in dense if re.search(general, p)]
        if sorted(everyone) == sorted(members) and len(set(members.values())) == 1:
            regexes = {general: next(iter(members.values()))}
        else:
            regexes = {"^" + re.escape(p) + "$": v for p, v in sorted(members.items())}
        for regex, (r, a) in regexes.items():
            targets.append(regex)
            if r != rank:
                ranks.append((regex, r))
            if a != alpha:
                alphas.append((regex, a))
    return tuple(targets), tuple(ranks), tuple(alphas)


def lora_config(settings: dict[str, Any], state: readers.LazyState, base: core.Plan) -> LoraConfig:
    """The LoraConfig the adapter describes, over the paths of `base.config`'s model."""
    table = api.family_rules(base.config).HF_RULES
    compiled = [(re.compile(r.pattern + "$"), r) for r in table if r.target.endswith("/kernel")]
    rank, alpha = int(settings["r"]), float(settings["lora_alpha"])
    found = {}
    for key in state:
        if not key.endswith(".lora_A.weight"):
            continue
        module = key[: -len(".lora_A.weight")]
        hit = next(
            ((m, r) for regex, r in compiled if (m := regex.match(module + ".weight"))), None
        )
        if hit is None:
            continue  # core.plan names the key: no rule maps it
        path = core._target_path(hit[1], hit[0], base.config)[: -len("/kernel")]
        module_alpha = _pattern_value(settings.get("alpha_pattern") or {}, module, alpha)
        found[path] = (int(state[key].shape[0]), float(module_alpha))
    dense = [p[: -len("/kernel")] for p in base.assignments if p.endswith("/kernel")]
    targets, ranks, alphas = _targets(found, dense, rank, alpha)
    if base.config.scan_layers and any(re.search(r"(layers|groups)_\\d", t) for t in targets):
        raise ValueError(
            "the adapter targets some layers of a stack and not others (or with other ranks): "
            "the scanned layout cannot hold that; convert without --scan_layers"
        )
    return LoraConfig(
        rank=rank if found else 0,
        alpha=alpha,
        dropout=float(settings.get("lora_dropout") or 0.0),
        targets=targets,
        rank_pattern=ranks,
        alpha_pattern=alphas,
        modules_to_save=tuple(settings.get("modules_to_save") or ()),
    )


def plan_peft(directory: str, adapter: str, **overrides: Any) -> api.HFPlan:
    """A `save_pretrained` InstructBLIP directory plus a peft LoRA adapter -> one plan: the base
    parameters (those of `modules_to_save` from the adapter) and the LoRA pairs."""
    base = api.plan_hf(directory, **overrides)
    settings, adapter_state = read_adapter(adapter)
    config = dataclasses.replace(base.config, lora=lora_config(settings, adapter_state, base))
    state = readers.read_hf_directory(directory)
    for key, entry in adapter_state.entries.items():
        if key in state:  # a module of `modules_to_save`: the adapter's copy is the trained one
            state.pop(key)
        state.add(key, entry)
    tables = api.family_rules(config)
    plan = core.plan(
        state,
        [*tables.HF_RULES, *lora_rules(tables.HF_RULES)],
        config,
        tables.HF_ALIASES,
        tables.HF_UNUSED,
    )
    fields = {f.name: getattr(plan, f.name) for f in dataclasses.fields(plan)}
    return api.HFPlan(**fields, image_token_index=base.image_token_index)


def module_of(key: str) -> str:
    """`a.b.weight` -> `a.b` (the torch module a tensor key belongs to)."""
    return key.rsplit(".", 1)[0]


def saves(module: str, names: tuple[str, ...] | list[str]) -> bool:
    """Whether peft's `modules_to_save` entries name `module` (the name or a dotted suffix)."""
    return any(module == n or module.endswith("." + n) for n in names)


def adapter_config(
    config: LoraConfig,
    modules: dict[str, tuple[int, float]],
    modules_to_save: list[str],
    base: str | None,
) -> dict[str, Any]:
    """adapter_config.json for the LoRA pairs {torch module: (rank, alpha)}: the exact modules as
    `target_modules`, and `rank_pattern`/`alpha_pattern` (exact module names) where a module's
    rank or alpha differs from `r`/`lora_alpha`."""
    return {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": base,
        "r": config.rank,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        "target_modules": sorted(modules),
        "rank_pattern": {m: r for m, (r, _) in sorted(modules.items()) if r != config.rank},
        "alpha_pattern": {m: a for m, (_, a) in sorted(modules.items()) if a != config.alpha},
        "modules_to_save": sorted(modules_to_save) or None,
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "inference_mode": True,
    }
