"""BLIP-2 -> an InstructBLIP initialisation (the paper's starting point), planned like any conversion.

Three sources (see `blip2_rules` for why BERT is needed and what the `[DEC]` row is):
- an HF `Blip2ForConditionalGeneration` directory (FlanT5) + a BERT directory (`--bert`);
- a LAVIS `blip2_t5` stage-2 state dict + BERT (+ `vit` / `language_model` when trimmed);
- a LAVIS stage-1 Q-Former checkpoint (`blip2_pretrained.pth`; it holds the text side) + the ViT
  + the language model: how a Vicuna model starts (no BLIP-2-Vicuna was released). Its projection
  is drawn fresh from `seed` as torch's `nn.Linear` would (U(+-1/sqrt(fan_in)), weight and bias).
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
import re
from collections import defaultdict
from collections.abc import Mapping
from types import ModuleType
from typing import Any

import numpy as np
from flax import traverse_util

from ib_jax.contract.config import InitConfig, build
from ib_jax.contract.model import ModelConfig
from ib_jax.convert import api, blip2_rules, core, readers, rules
from ib_jax.convert.api import family_rules, tie_if_headless
from ib_jax.convert.hf_config import model_config_from_hf, read_hf_config
from ib_jax.models import families

_WORDS = "Qformer.bert.embeddings.word_embeddings.weight"
_PROJECTION = re.compile(r"(t5|opt|llm)_proj\.weight")


def plan_blip2(
    blip2: str,
    bert: str | None = None,
    config: ModelConfig | None = None,
    vit: str | None = None,
    language_model: str | None = None,
    seed: int = 0,
    scan_layers: bool | None = None,
    remat_policy: str | None = None,
) -> core.Plan:
    """Plan the conversion of a BLIP-2 source; `config` (ours) is needed for LAVIS files and, when
    given with an HF directory, must describe the same architecture."""
    layout = {
        k: v
        for k, v in dict(scan_layers=scan_layers, remat_policy=remat_policy).items()
        if v is not None
    }
    if config is not None:
        # An initialisation holds the text side whatever the config switches on later.
        config = dataclasses.replace(config, instruction_aware=True, **layout)
    if os.path.isdir(blip2):
        return _plan_hf(blip2, bert, config, vit, language_model, seed, layout)
    state = readers.read_any(blip2).with_origin(f"BLIP-2 {blip2}")
    if not any(key.startswith("Qformer.bert.") for key in state):
        raise core.ConversionError(f"{blip2} is not a LAVIS BLIP-2 checkpoint: no Qformer.bert.*")
    if config is None:
        raise core.ConversionError(
            f"{blip2}: a LAVIS checkpoint needs our config (--config) for the architecture"
        )
    projections = [key for key in state if _PROJECTION.fullmatch(key)]
    if _WORDS in state and projections:
        raise core.ConversionError(
            f"{blip2} holds {_WORDS} and {projections[0]}: an InstructBLIP checkpoint, not BLIP-2;"
            " convert it with --lavis"
        )
    _check_stage(blip2, _WORDS in state, projections, bert, config)
    if vit is not None:
        state.update(readers.read_any(vit), "visual_encoder.", f"EVA ViT {vit}")
    if language_model is not None:
        prefix = _family_rules(config).LAVIS_PREFIX
        state.update(readers.read_any(language_model), prefix, f"language model {language_model}")
    lm_prefixes = tuple(
        importlib.import_module(family.conversion).LAVIS_PREFIX
        for family in families.FAMILIES.values()
    )
    for prefix, flag in (("visual_encoder.", "--vit"), (lm_prefixes, "--language_model")):
        if not any(key.startswith(prefix) for key in state):
            raise core.ConversionError(
                f"{blip2} holds no {prefix if isinstance(prefix, str) else ' or '.join(prefix)}* "
                f"tensors (a trimmed checkpoint): give them with {flag}"
            )
    if _WORDS in state:
        return _plan_stage1(state, config, seed)
    return _plan_stage2(blip2, state, bert, config, seed)


def _check_stage(blip2: str, stage1: bool, projections: list[str], bert, config) -> None:
    """A stage-1 file takes no BERT; a stage-2 file needs one and must be FlanT5's."""
    if stage1:
        if bert is not None:
            raise core.ConversionError(
                f"{blip2} is a stage-1 checkpoint: it holds the Q-Former's text side ({_WORDS}); "
                "--bert is not used with it"
            )
        return
    projection = projections[0] if projections else "no *_proj.weight"
    if projection != _family_rules(config).LAVIS_STAGE2_PROJECTION:
        raise core.ConversionError(
            f"{blip2} is a BLIP-2 stage-2 checkpoint for another language model ({projection}; "
            f"no {_WORDS}): a {config.lm_type} initialisation starts from the stage-1 Q-Former "
            "checkpoint (LAVIS blip2_pretrained.pth) with a fresh projection"
        )
    if bert is None:
        raise core.ConversionError(
            f"{blip2} is a BLIP-2 stage-2 checkpoint: it has no Q-Former text side (no {_WORDS}, "
            "no encoder.layer.N.intermediate); give the BERT it started from (--bert)"
        )


def _plan_hf(blip2, bert, config, vit, language_model, seed, layout) -> core.Plan:
    hf = read_hf_config(blip2)
    if hf.get("model_type") != "blip-2":
        hint = (
            " (an InstructBLIP directory: use --hf)"
            if hf.get("model_type") == "instructblip"
            else ""
        )
        raise core.ConversionError(
            f"{blip2}/config.json: model_type {hf.get('model_type')!r}, not 'blip-2'{hint}"
        )
    if vit is not None or language_model is not None:
        raise core.ConversionError(
            f"{blip2}: an HF BLIP-2 directory holds every tower; drop --vit/--language_model"
        )
    try:
        derived = model_config_from_hf(hf, **layout)
    except ValueError as err:
        raise core.ConversionError(f"{blip2}/config.json: {err}") from err
    state = readers.read_hf_directory(blip2).with_origin(f"BLIP-2 {blip2}")
    bert_state, std = _read_bert(bert, blip2, derived.qformer.hidden_size)
    words = bert_state[blip2_rules.BERT_PREFIX + "embeddings.word_embeddings.weight"].shape
    positions = bert_state[blip2_rules.BERT_PREFIX + "embeddings.position_embeddings.weight"].shape
    qformer = dataclasses.replace(
        derived.qformer,
        vocab_size=words[0] + blip2_rules.DEC_ROWS,
        max_position_embeddings=positions[0],
    )
    derived = dataclasses.replace(derived, qformer=qformer, instruction_aware=True)

    derived = tie_if_headless(derived, state, "language_model.lm_head.weight")
    if config is not None:
        derived = _same_architecture(config, derived, blip2)
    state.update(bert_state)
    table = [*blip2_rules.hf_blip2_rules(), *blip2_rules.bert_text_rules(seed, std)]
    return core.plan(state, table, derived, blip2_rules.HF_ALIASES, blip2_rules.BERT_SUPERSEDED)


def _plan_stage2(blip2, state, bert, config, seed) -> core.Plan:
    bert_state, std = _read_bert(bert, blip2, config.qformer.hidden_size)
    state.update(bert_state)
    core.fuse_lavis_qkv_bias(state)
    config = tie_if_headless(config, state, "t5_model.lm_head.weight")
    table = [*blip2_rules.lavis_stage2_rules(), *blip2_rules.bert_text_rules(seed, std)]
    unused = [*rules.LAVIS_UNUSED, *blip2_rules.BERT_SUPERSEDED]
    return core.plan(state, table, config, rules.LAVIS_ALIASES, unused)


def _plan_stage1(state, config, seed) -> core.Plan:
    tables = _family_rules(config)
    lm_width = families.family_of(config.text).width(config.text)
    width = config.qformer.hidden_size
    for name, shape in (("weight", (lm_width, width)), ("bias", (lm_width,))):
        state.add(f"{blip2_rules.FRESH_PROJECTION}.{name}", _fresh_linear(shape, width, seed))
    core.fuse_lavis_qkv_bias(state)
    unused = [*blip2_rules.STAGE1_UNUSED, *tables.LAVIS_UNUSED]
    config = tie_if_headless(config, state, tables.LAVIS_PREFIX + "lm_head.weight")
    table = blip2_rules.lavis_stage1_rules(tables.LAVIS_LM_RULES)
    return core.plan(state, table, config, tables.LAVIS_ALIASES, unused)


def _family_rules(config: ModelConfig) -> ModuleType:
    return family_rules(config)


def _fresh_linear(shape: tuple[int, ...], fan_in: int, seed: int) -> readers.Entry:
    bound = 1.0 / math.sqrt(fan_in)
    stream = 1 + len(shape)  # weight and bias draw from their own streams

    def draw() -> np.ndarray:
        return (
            np.random.default_rng([seed, stream]).uniform(-bound, bound, shape).astype(np.float32)
        )

    name = "weight" if len(shape) == 2 else "bias"
    return readers.Entry(
        shape, np.dtype(np.float32), f"seed {seed}", name, draw, f"fresh init (seed {seed})"
    )


def _read_bert(bert: str, blip2: str, width: int) -> tuple[readers.LazyState, float]:
    """BERT's tensors under `bert.` (origin-labelled) and its initializer_range; its width checked."""
    if bert is None:
        raise core.ConversionError(f"{blip2}: the Q-Former's text side needs a BERT (--bert)")
    hf = read_hf_config(bert)
    if hf.get("model_type", "bert") != "bert":
        raise core.ConversionError(
            f"{bert}/config.json: model_type {hf['model_type']!r}, not 'bert'"
        )
    source = readers.read_hf_directory(bert)
    state = readers.LazyState()
    for key, entry in source.entries.items():
        name = key[len("bert.") :] if key.startswith("bert.") else key
        state.add(blip2_rules.BERT_PREFIX + name, dataclasses.replace(entry, origin=f"BERT {bert}"))
    words_key = blip2_rules.BERT_PREFIX + "embeddings.word_embeddings.weight"
    if words_key not in state:
        raise core.ConversionError(f"{bert}: no embeddings.word_embeddings.weight (is it a BERT?)")
    words = state[words_key]
    if words.shape[-1] != width:
        raise core.ConversionError(
            f"{words.file}: {words.file_key} is {words.shape}, a BERT {words.shape[-1]} wide, but "
            f"the Q-Former of {blip2} is {width} wide; the text side needs a BERT of the "
            "Q-Former's width (bert-base-uncased for the released BLIP-2)"
        )
    return state, float(hf.get("initializer_range", 0.02))


def _same_architecture(config: ModelConfig, derived: ModelConfig, source: str) -> ModelConfig:
    """`config` if its parameters have the shapes of `derived`'s (read off the checkpoints).

    Shapes, not fields: the config may rightly differ in what a checkpoint does not say (LAVIS
    ran BLIP-2's FlanT5 with exact GELU where HF's config.json reads as the tanh form)."""
    ours = traverse_util.flatten_dict(core.abstract_params(config), sep="/")
    theirs = traverse_util.flatten_dict(core.abstract_params(derived), sep="/")
    differ = [
        f"{path} {ours[path].shape if path in ours else 'absent'} vs "
        f"{theirs[path].shape if path in theirs else 'absent'}"
        for path in sorted(set(ours) | set(theirs))
        if path not in ours or path not in theirs or ours[path].shape != theirs[path].shape
    ]
    if differ:
        raise core.ConversionError(
            f"the config describes another architecture than {source} + BERT: "
            + "; ".join(differ[:6])
            + (f" ... ({len(differ)} parameters differ)" if len(differ) > 6 else "")
        )
    return config


def provenance(plan: core.Plan) -> dict[str, dict[str, list[int]]]:
    """{origin: {part: [tensors, parameters]}}: where each parameter of the plan comes from.

    Parts are target paths without the leaf name, layer numbers as `*`; the `[DEC]` row counts as
    a fresh initialisation, the rest of its embedding as BERT's."""
    table: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for target, assignment in plan.assignments.items():
        origin = assignment.entry.origin or assignment.entry.file
        parts = re.sub(r"_\d+", "_*", target).split("/")
        part = "/".join(parts[: 4 if parts[0] == "qformer" and len(parts) > 4 else 2])
        size = math.prod(assignment.shape)
        if getattr(assignment.rule.hook, "adds_dec_row", False):
            row = math.prod(assignment.shape[1:]) * blip2_rules.DEC_ROWS
            fresh = table[f"fresh init (seed {assignment.rule.hook.seed})"][part + " [DEC] row"]
            fresh[1] += row
            size -= row
        counts = table[origin][part]
        counts[0] += 1
        counts[1] += size
    return {origin: dict(parts) for origin, parts in table.items()}


def summary(plan: core.Plan) -> str:
    """A printable table of `provenance(plan)` with totals per origin."""
    lines = ["where the InstructBLIP parameters come from:"]
    total = 0
    for origin, parts in provenance(plan).items():
        params = sum(p for _, p in parts.values())
        tensors = sum(t for t, _ in parts.values())
        total += params
        lines.append(f"  {origin}: {tensors} tensors, {params:,d} parameters")
        for part, (count, size) in parts.items():
            lines.append(f"      {part:44s} {count:5d} {size:>15,d}")
    lines.append(f"  total: {total:,d} parameters")
    return "\n".join(lines)


def initial_params(
    init: Mapping[str, Any] | InitConfig, model_config: ModelConfig
) -> dict[str, Any]:
    """`config.init` naming a BLIP-2 start -> params in `model_config`'s layout (for the trainer).

    Fields (`InitConfig`): `blip2` (an HF BLIP-2 directory or LAVIS file, as `--blip2`), `bert`,
    `vit`, `language_model`, `seed`. The architecture must be `model_config`'s; a model without
    the instruction input (`instruction_aware=False`, BLIP-2 training) gets no text-side tensors.
    """
    init = build(InitConfig, "init", init)
    plan = plan_blip2(
        init.blip2,
        init.bert or None,
        model_config,
        init.vit or None,
        init.language_model or None,
        init.seed,
        scan_layers=model_config.scan_layers,
        remat_policy=model_config.remat_policy,
    )
    kept = set(traverse_util.flatten_dict(core.abstract_params(model_config), sep="/"))
    plan.assignments = {t: a for t, a in plan.assignments.items() if t in kept}
    return api.to_memory(plan)
