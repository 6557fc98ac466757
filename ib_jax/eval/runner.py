"""One dataset on every process: batches in lockstep, predictions gathered in the dataset's order,
the metric computed once.

Every process reads its shard of the split (`data_pipelines.eval_pipeline`: records
`process_index::process_count`, the same number of padded batches everywhere) and runs the same
jitted step per batch. Before each step the processes agree (one small all-gather) that each has
a batch, on the shapes the step needs and on whether any process failed to prepare its batch, so
that one host's bad file fails the dataset on every host instead of leaving the others waiting in
a collective. Afterwards each process's prediction records (with their position in the split)
are gathered, put back in the dataset's order, and process 0 computes the metric; its result (or
its error) is shared with every process.

No NaN reaches a metric: rows flagged non-finite by the jitted step keep a null prediction, are
counted in `num_nonfinite` and left out of the metric; past `max_bad_fraction` of the split they
fail the dataset, as does a metric that comes out non-finite.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import numpy as np

from ib_jax.eval import hosts
from ib_jax.eval import metrics as metrics_lib

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class EvalResult:
    """One dataset on one checkpoint: the metric with its counts, and one record per example."""

    metrics: dict[str, float]  # score, extras, counts
    predictions: list[dict[str, Any]]  # one JSON-able dict per example


class NonFiniteOutputError(FloatingPointError):
    """Too many examples of a dataset had NaN or infinite logits or scores to report a metric."""


def _valid_rows(batch: dict[str, Any]) -> list[int]:
    valid = batch.get("valid")
    return [i for i in range(len(batch["input_ids"])) if valid is None or int(valid[i])]


def _meta(batch: dict[str, Any], key: str, row: int) -> Any:
    values = batch.get("meta", {}).get(key)
    return None if values is None else values[row]


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _lockstep(evaluator: Any, batches: Iterable[dict[str, Any]]) -> Iterator[tuple]:
    """(batch, valid rows, agreed width, valid rows on all processes) per step, while every process
    has a batch; a failure to prepare one on any process raises on all."""
    iterator = iter(batches)
    while True:
        status, width, rows, error, batch = 1, (0, 0), [], None, None
        try:
            batch = next(iterator)
            rows = _valid_rows(batch)
            width = evaluator.batch_width(batch, rows)
        except StopIteration:
            status = 0
        except Exception as e:  # raised below on every process, after they all know
            status, error = 2, e
        agreed = hosts.allgather_ints([status, len(rows), *width])
        if (agreed[:, 0] == 2).any():
            hosts.raise_if_any(error, "prepare its batch")
        if (agreed[:, 0] == 0).all():
            return
        if (agreed[:, 0] == 0).any():
            raise RuntimeError(
                "the processes' shards of this dataset have different numbers of batches "
                f"(finished: {np.flatnonzero(agreed[:, 0] == 0).tolist()})"
            )
        yield batch, rows, tuple(int(w) for w in agreed[:, 2:].max(0)), int(agreed[:, 1].sum())


def predict_records(
    evaluator: Any,
    program: Any,
    batches: Iterable[dict[str, Any]],
    progress: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """This process's prediction records, each with `index`: the example's position in the split."""
    process, count = jax.process_index(), jax.process_count()
    records: list[dict[str, Any]] = []
    for number, (batch, rows, width, valid_anywhere) in enumerate(_lockstep(evaluator, batches)):
        if not valid_anywhere:
            continue
        size = len(batch["input_ids"])
        outputs = evaluator.predict(program, batch, rows, width)
        for row, output in zip(rows, outputs):
            record = {
                # The shard is records[process::count], read in order.
                "index": (number * size + row) * count + process,
                "id": _jsonable(_meta(batch, "id", row)),
                "instruction": _meta(batch, "instruction", row),
                "prediction": _jsonable(output["prediction"]),
                "reference": _jsonable(evaluator.reference(batch, row)),
            }
            record.update(
                {k: _jsonable(v) for k, v in output.items() if k not in ("prediction", "nonfinite")}
            )
            if output.get("nonfinite"):
                record.update(prediction=None, nonfinite=True)
                record.pop("scores", None)
            error = _meta(batch, "error", row)
            if error:
                record["error"] = error
            records.append(record)
        if progress is not None:
            progress(len(rows))
    return records


def score(
    evaluator: Any, records: list[dict[str, Any]], max_bad_fraction: float
) -> dict[str, float]:
    """Counts and the metric over the records that have a reference and finite outputs; writes
    each scored record's `score`."""
    dataset, field, metric = (
        evaluator.settings.dataset,
        evaluator.reference_field,
        evaluator.settings.metric,
    )
    nonfinite = [r for r in records if r.get("nonfinite")]
    unreferenced = [r for r in records if r["reference"] in (None, [])]
    scored = [r for r in records if not r.get("nonfinite") and r["reference"] not in (None, [])]
    metrics: dict[str, float] = {
        "num_examples": len(records),
        "num_scored": len(scored),
        "missing_images": sum(1 for r in records if r.get("error")),
        f"missing_{field}": len(unreferenced),
        "num_nonfinite": len(nonfinite),
    }
    if nonfinite:
        message = (
            f"{dataset}: {len(nonfinite)} of {len(records)} examples gave NaN or infinite logits "
            f"or scores (ids {[r['id'] for r in nonfinite[:3]]}...); they are not scored"
        )
        if len(nonfinite) > max_bad_fraction * len(records):
            raise NonFiniteOutputError(f"{message}, more than max_bad_fraction={max_bad_fraction}")
        logger.warning(message)
    if unreferenced:
        logger.warning(
            "%s: %d of %d examples have no %r; the metric covers %d",
            *(dataset, len(unreferenced), len(records), field, len(scored)),
        )
    if not scored:
        return metrics
    result = metrics_lib.compute(
        metric, [evaluator.metric_input(r) for r in scored], [r["reference"] for r in scored]
    )
    extras = {k: v for k, v in result.items() if k not in ("metric", "score", "per_example")}
    values = {metric: result["score"], **extras}
    bad = {k: v for k, v in values.items() if not math.isfinite(float(v))}
    if bad:
        raise NonFiniteOutputError(f"{dataset}: the metric came out non-finite: {bad}")
    metrics.update({k: float(v) for k, v in values.items()})
    for record, value in zip(scored, result["per_example"]):
        record["score"] = value
    return metrics


def run(
    evaluator: Any,
    program: Any,
    batches: Iterable[dict[str, Any]],
    progress: Callable[[int], None] | None = None,
    max_bad_fraction: float = 1.0,
) -> EvalResult:
    """Predict on every process, gather in the split's order, score on process 0 (EvalResult)."""
    local = predict_records(evaluator, program, batches, progress)
    records = sorted((r for part in hosts.allgather_json(local) for r in part), key=_index)
    for record in records:
        del record["index"]
    metrics = hosts.on_first(lambda: score(evaluator, records, max_bad_fraction))
    return EvalResult(metrics, records)


def _index(record: dict[str, Any]) -> int:
    return record["index"]


__all__ = ["EvalResult", "NonFiniteOutputError", "predict_records", "score", "run"]
