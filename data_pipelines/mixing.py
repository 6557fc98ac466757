"""Per-example mixing of the training datasets: p_d ∝ sqrt(size_d) x multiplier_d (paper Sec. 2.4).

Sizes are the measured number of records each source holds (what will actually be sampled); the
registry's `sampling_weights` does the arithmetic and rejects unknown names and zero weights.
"""

from __future__ import annotations

from collections.abc import Mapping

import grain

from data_pipelines import registry


def mixture_weights(
    sizes: Mapping[str, int], multipliers: Mapping[str, float] | None = None
) -> dict[str, float]:
    """{dataset: size} (+ optional {dataset: multiplier}) -> {dataset: probability}, summing to 1."""
    return registry.sampling_weights(list(sizes), multipliers=multipliers, sizes=sizes)


def mix(datasets: Mapping[str, grain.MapDataset], weights: Mapping[str, float]) -> grain.MapDataset:
    """Mixes endless per-dataset MapDatasets example by example with `weights`.

    Grain's MapDataset mix is deterministic and indexable: element i of the mixture is a
    function of i alone (it interleaves by cumulative proportion, so the realized fractions track
    the weights closely at every prefix), which gives the global data order (global_order).
    """
    names = list(datasets)
    missing = [n for n in names if n not in weights]
    if missing:
        raise KeyError(f"no mixing weight for datasets {missing}")
    return grain.MapDataset.mix([datasets[n] for n in names], [float(weights[n]) for n in names])
