"""The closing summary of `train` and `evaluate`: what was written, the final numbers, where to look.

    train done: checkpoint workdirs/demo/checkpoints/600 (step 600 of 600)
      metric          value
      loss            0.4123
      ...
    evaluation of step_600:
      evaluation    metric        value   examples
      demo_vqa      vqa_accuracy  0.957   100
    logs           workdirs/demo/logs/train.log
    metrics        workdirs/demo/metrics.jsonl, TensorBoard workdirs/demo/tensorboard
    predictions    workdirs/demo/eval/predictions/<evaluation>/step_600.jsonl
    pages          workdirs/demo/eval/predictions/<evaluation>/step_600.html

`closing_summary` builds the text from the workdir: its newest checkpoint, the training
metrics the job returns, and the evaluation results of the newest evaluated checkpoint
(WORKDIR/eval/metrics.jsonl, which the eval job writes in one-shot and watch mode alike); the
job prints it on process 0 as its last lines.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from etils import epath

from ib_jax import checkpoint
from ib_jax.contract import cli
from ib_jax.contract.metrics import METRIC_NAMES

# Training metrics shown, in this order (metrics_writer's names), when the job logged them.
TRAIN_METRICS = ("loss", "grad_norm", "learning_rate", "examples_per_s", "tokens_per_s", "mfu")


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value)


def table(header: tuple[str, ...], rows: list[tuple[Any, ...]], indent: str = "  ") -> list[str]:
    """Aligned columns, two spaces apart."""
    cells = [tuple(str(c) for c in header)] + [tuple(_number(c) for c in row) for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return [indent + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]


def main_metric(metrics: Mapping[str, Any]) -> tuple[str, Any]:
    """(name, value) of an evaluation's metric (the first of METRIC_NAMES it has); ("-",
    "failed") for one that failed."""
    if "error" in metrics:
        return "-", "failed"
    for name in METRIC_NAMES:
        if name in metrics:
            return name, metrics[name]
    return "-", "-"


def latest_evaluation(workdir: str) -> tuple[str | None, dict[str, dict[str, Any]]]:
    """(checkpoint tag, {evaluation: metrics}) of the newest checkpoint in
    WORKDIR/eval/metrics.jsonl; (None, {}) when nothing was evaluated."""
    path = epath.Path(workdir) / "eval" / "metrics.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    if not lines:
        return None, {}
    tag = lines[-1]["checkpoint"]
    bookkeeping = ("checkpoint", "step", "dataset", "time", "failed")
    return tag, {
        line["dataset"]: {k: v for k, v in line.items() if k not in bookkeeping}
        for line in lines
        if line["checkpoint"] == tag
    }


def _eval_lines(results: Mapping[str, Mapping[str, Any]]) -> list[str]:
    rows = []
    for evaluation, metrics in results.items():
        name, value = main_metric(metrics)
        rows.append((evaluation, name, value, metrics.get("num_examples", "-")))
    failures = [
        f"  {evaluation} failed: {str(metrics['error']).splitlines()[0]}"
        for evaluation, metrics in results.items()
        if "error" in metrics
    ]
    return table(("evaluation", "metric", "value", "examples"), rows) + failures


def closing_summary(
    job: str,
    workdir: str,
    train_metrics: Mapping[str, Any] | None = None,
    num_steps: int | None = None,
    evaluated: bool = True,
    log_path: str | None = None,
) -> str:
    """The summary's lines (module docstring) of `job` ("train" or "evaluate"): the newest
    checkpoint of `workdir` and the final `train_metrics` (train), the newest evaluation's
    results when `evaluated`, and where the logs, metrics, predictions and pages are."""
    lines = []
    checkpoint_tag, eval_results = latest_evaluation(workdir) if evaluated else (None, {})
    steps = checkpoint.finalized_steps(workdir)
    if job == "train":
        where = checkpoint.step_dir(workdir, steps[-1]) if steps else "none written"
        of = f" of {num_steps}" if num_steps else ""
        lines.append(
            f"train done: checkpoint {where}" + (f" (step {steps[-1]}{of})" if steps else "")
        )
        shown = [(k, train_metrics[k]) for k in TRAIN_METRICS if k in (train_metrics or {})]
        if shown:
            lines += table(("metric", "value"), shown)
    if eval_results:
        lines.append(f"evaluation of {checkpoint_tag}:")
        lines += _eval_lines(eval_results)
    root = epath.Path(workdir)
    log_path = log_path or cli.current_log_path() or str(root / "logs" / f"{job}.log")
    places = [("logs", log_path)]
    if job == "train":
        places.append(("metrics", f"{root / 'metrics.jsonl'}, TensorBoard {root / 'tensorboard'}"))
    if eval_results:
        predictions = root / "eval" / "predictions"
        tag = checkpoint_tag
        places.append(("eval metrics", str(root / "eval" / "metrics.jsonl")))
        places.append(("predictions", str(predictions / "<evaluation>" / f"{tag}.jsonl")))
        pages = sorted(predictions.glob(f"*/{tag}.html")) if predictions.exists() else []
        if pages:
            places.append(("pages", ", ".join(str(p) for p in pages)))
    lines += table(("where", ""), places, indent="")[1:]
    return "\n".join(lines)
