"""Registry of the paper's 26 datasets (InstructBLIP Figure 2) plus the embedded demo family.

Held-in (13, used for instruction tuning): COCO Caption, Web CapFilt, TextCaps, VQAv2, OKVQA,
A-OKVQA, OCR-VQA, the question-generation variants of VQAv2/OKVQA/A-OKVQA, and the three parts of
LLaVA-Instruct-150K (conversation, detailed description, complex reasoning: Figure 2 counts them
separately, which is how the paper arrives at 26 datasets / 13 held-in).
Held-out (13, zero-shot evaluation; each can also be a finetuning source): NoCaps, Flickr30K,
GQA, VSR, IconQA, VizWiz, ScienceQA (IMG), TextVQA, MSVD-QA, MSRVTT-QA, iVQA, Visual Dialog,
HatefulMemes.

`num_train` is the size of the public training split (the unit the parser yields: questions for
QA, captions for captioning, rounds for dialogs); `size_source` says where the number comes from.
It drives the sqrt(size) mixing weights; pass measured sizes to `sampling_weights` to override.
`None` means no training split / not recorded (held-out sets are never mixed).

Data facts only: how a dataset is evaluated (prompt, generate or rank, decoding, metric) is
declared by the run config that evaluates it (`config.evals`; the paper's protocol per dataset is
configs/evals.py).

The row type is `specs.DatasetSpec`; the rows are in `registry_table`. A new dataset: a parser in
its family's module under `formats/`, then a row in `registry_table`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from data_pipelines.registry_table import SPECS
from data_pipelines.specs import DatasetSpec

REGISTRY: dict[str, DatasetSpec] = {spec.name: spec for spec in SPECS}
assert len(REGISTRY) == len(SPECS), "duplicate dataset name in the registry"

# The paper (Sec. 2.4) lowers A-OKVQA's weight (its multiple-choice task overfits) and raises
# OKVQA's, but does not publish the factors. Defaults stay neutral; pass the factors you use.
DEFAULT_MULTIPLIERS: dict[str, float] = {}


def get(name: str) -> DatasetSpec:
    """The spec of one dataset; a clear error naming the unknown one and listing the known."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown dataset '{name}'; known datasets: {sorted(REGISTRY)}") from None


def names() -> list[str]:
    """Every registered dataset name, in table order."""
    return list(REGISTRY)


def held_in() -> list[str]:
    """The 13 instruction-tuning datasets."""
    return [n for n, s in REGISTRY.items() if s.split == "held_in"]


def held_out() -> list[str]:
    """The 13 zero-shot evaluation datasets."""
    return [n for n, s in REGISTRY.items() if s.split == "held_out"]


def demo() -> list[str]:
    """The embedded demo's datasets (data_pipelines/demo_data.py)."""
    return [n for n, s in REGISTRY.items() if s.split == "demo"]


def sampling_weights(
    names: Sequence[str],
    multipliers: Mapping[str, float] | None = None,
    sizes: Mapping[str, int] | None = None,
) -> dict[str, float]:
    """Mixing probabilities p_d ∝ sqrt(size_d) * multiplier_d, normalized to sum to 1.

    `sizes` overrides the registry's `num_train` (e.g. counts measured by the parsers; the demo
    datasets have no registry size). Unknown names in `multipliers`/`sizes` are an error, so a
    typo cannot silently leave a weight at its default.
    """
    if not names:
        raise ValueError("sampling_weights: no datasets given")
    names = list(names)
    mult = {**DEFAULT_MULTIPLIERS, **(multipliers or {})}
    sizes = dict(sizes or {})
    for label, table in (("multipliers", multipliers or {}), ("sizes", sizes)):
        stray = sorted(set(table) - set(names))
        if stray:
            raise ValueError(
                f"sampling_weights: {label} given for datasets not in the mixture: "
                f"{stray}; mixture: {names}"
            )
    raw = {}
    for name in names:
        # Not sizes.get(name, get(name)...): the default would be looked up (and fail) for
        # a measured user dataset that is not in the registry.
        size = sizes[name] if name in sizes else get(name).num_train
        if size is None or size <= 0:
            raise ValueError(
                f"sampling_weights: dataset '{name}' has no training size "
                f"(registry: {get(name).size_source}); pass sizes={{'{name}': N}}"
            )
        factor = mult.get(name, 1.0)
        if factor <= 0:  # a zero weight means a dataset that is listed but never sampled
            raise ValueError(
                f"sampling_weights: multiplier for '{name}' must be > 0, got "
                f"{factor}; drop the dataset from the mixture instead"
            )
        raw[name] = math.sqrt(size) * factor
    total = sum(raw.values())
    if total <= 0:
        raise ValueError(f"sampling_weights: all weights are zero for {names}")
    return {name: value / total for name, value in raw.items()}
