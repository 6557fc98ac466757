"""benchmarks/eval_throughput.py at the tiny size: every setting runs on both sides, and both
sides compute the same thing (tokens, candidate scores); timings are not asserted."""

import dataclasses

import numpy as np
import pytest

from benchmarks import eval_throughput
from benchmarks import run as bench

# Needs the PyTorch reference (torch + transformers): the reference CI lane only.
pytestmark = pytest.mark.reference


def test_eval_throughput_runs_every_setting_and_both_sides_agree():
    bc = dataclasses.replace(bench.tiny(), warmup=0, repeats=1)
    results = eval_throughput.run(bc, threads=1, tiny=True, log=lambda s: None)
    settings = results["settings"]
    assert set(settings) == {"qa", "captions", "qa_1_token", "rank2", "rank100"}
    for name, row in settings.items():
        assert all(np.isfinite(v) and v > 0 for v in row["examples_per_s"].values()), name
        agreement = row["agreement"]
        if name.startswith("rank"):
            assert agreement["same_best"] == 1.0 and agreement["max_relative_difference"] < 1e-5
        else:
            assert agreement["tokens_equal"] == 1.0, name
    assert "| rank100 |" in eval_throughput.table(results)
