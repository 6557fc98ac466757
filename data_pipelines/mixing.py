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


def mix(
    datasets: Mapping[str, grain.IterDataset], weights: Mapping[str, float]
) -> grain.IterDataset:
    """Mixes infinite per-dataset streams example by example with `weights`.

    A mapping (not a list) is passed to grain so a checkpoint restores each component's state by
    dataset name. Grain's mix is deterministic: it interleaves by cumulative proportion, so the
    realized fractions track the weights closely at every prefix of the stream.
    """
    names = list(datasets)
    missing = [n for n in names if n not in weights]
    if missing:
        raise KeyError(f"no mixing weight for datasets {missing}")
    return grain.IterDataset.mix(
        {n: datasets[n] for n in names}, {n: float(weights[n]) for n in names}
    )
