"""The names of the evaluation metrics, the keys of `ib_jax.eval.metrics.METRICS`.

A dataset's or an evaluation's `metric` field names one of these; the data side checks its rows
against this tuple without importing the implementations (which check their table equals it).
"""

from __future__ import annotations

METRIC_NAMES = (
    "vqa_accuracy",
    "cider",
    "exact_match",
    "accuracy",
    "auc",
    "mrr",
    "ivqa_accuracy",
)
