"""Per-dataset evaluators: batches of `data_pipelines.pipeline.build_eval_dataset` -> metric + predictions.

Registry keyed by the registry's eval mode (`EVALUATORS["generate" | "rank"]`); the metric decides
how predictions and references are formed:

| mode     | metric                         | prediction                       | reference (meta)          |
|----------|--------------------------------|----------------------------------|---------------------------|
| generate | vqa_accuracy / ivqa_accuracy   | decoded text                     | answers                   |
| generate | cider                          | decoded text                     | captions                  |
| generate | exact_match / accuracy         | decoded text                     | answers (first for acc.)  |
| rank     | accuracy                       | argmax candidate index           | answer_index (or answers) |
| rank     | exact_match / vqa_accuracy     | argmax candidate text            | answers                   |
| rank     | mrr                            | candidate scores (100)           | gt_index                  |
| rank     | auc                            | P(first candidate), e.g. "yes"   | label                     |

Candidates come from the example (`choices`, Visual Dialog's `answer_options`) or from a fixed
list in the settings (HatefulMemes ["yes", "no"], VSR ["true", "false"], an answer vocabulary for
MSVD/MSRVTT). Video clips need nothing special: the model takes pixel_values [B, F, H, W, 3].

Bad input is reported, never silently dropped: padding rows (valid == 0) are discarded, examples
with an unreadable image are scored on the zero image the pipeline substitutes (and counted in
`missing_images`), and examples without the reference field the metric needs are counted in
`missing_<field>` and left out of `num_scored` (e.g. unlabeled test splits), which is reported
next to `num_examples`.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from ib_jax import decode
from ib_jax.eval import metrics as metrics_lib
from ib_jax.eval import ranking

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """Everything an evaluator needs about one dataset (registry defaults + config overrides)."""

    dataset: str
    metric: str
    eval_mode: str  # "generate" | "rank"
    num_beams: int = 5
    max_new_tokens: int = 10
    min_new_tokens: int = 1
    length_penalty: float = -1.0
    repetition_penalty: float = 1.0
    candidates: tuple[str, ...] = ()  # fixed candidate list (rank); empty = from the example
    length_normalize: bool = False  # rank: mean instead of sum of token log-probs
    candidate_max_len: int = 16  # rank: tokens per candidate, </s> included
    candidate_chunk: int = 0  # rank: candidates per decoder pass (0 = all)


@dataclasses.dataclass
class EvalResult:
    """One dataset on one checkpoint: the metric with its counts, and one record per example."""

    metrics: dict[str, float]  # score, extras, counts
    predictions: list[dict[str, Any]]  # one JSON-able dict per example


_REFERENCE_FIELD = {
    ("generate", "vqa_accuracy"): "answers",
    ("generate", "ivqa_accuracy"): "answers",
    ("generate", "cider"): "captions",
    ("generate", "exact_match"): "answers",
    ("generate", "accuracy"): "answers",
    ("rank", "accuracy"): "answer_index",
    ("rank", "exact_match"): "answers",
    ("rank", "vqa_accuracy"): "answers",
    ("rank", "ivqa_accuracy"): "answers",
    ("rank", "mrr"): "gt_index",
    ("rank", "auc"): "label",
}


def _valid_rows(batch: dict[str, Any]) -> list[int]:
    valid = batch.get("valid")
    size = len(batch["input_ids"])
    return [i for i in range(size) if valid is None or int(valid[i])]


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


class Evaluator(abc.ABC):
    """Subclasses implement `predict(model, params, batch, rows) -> list of per-row predictions`
    and `reference(batch, row)`; `run` does the bookkeeping shared by all."""

    def __init__(self, settings: EvalSettings, tokenizer: Any):
        self.settings = settings
        self.tokenizer = tokenizer  # LM tokenizer: .decode(ids), .encode_target(text, max_len)
        key = (settings.eval_mode, settings.metric)
        if key not in _REFERENCE_FIELD:
            raise ValueError(
                f"dataset {settings.dataset!r}: no evaluator for mode {key[0]!r} with metric "
                f"{key[1]!r}; supported: {sorted(_REFERENCE_FIELD)}"
            )
        self.reference_field = _REFERENCE_FIELD[key]

    @abc.abstractmethod
    def predict(
        self, model: Any, params: Any, batch: dict[str, Any], rows: list[int]
    ) -> list[dict[str, Any]]:
        """Per-row outputs for the batch rows `rows`: {"prediction": ..., other fields kept}.

        `batch` is one eval batch: the model inputs ([B, ...] arrays), `valid` [B] and `meta`
        (per-row lists of the example's fields).
        """

    def reference(self, batch: dict[str, Any], row: int) -> Any:
        """What the metric compares row `row`'s prediction with (None: the example is unscored)."""
        value = _meta(batch, self.reference_field, row)
        if (
            self.reference_field == "answers"
            and self.settings.metric in ("accuracy", "exact_match")
            and value
        ):
            return value[0] if self.settings.metric == "accuracy" else list(value)
        return value

    def run(
        self,
        model: Any,
        params: Any,
        batches: Iterable[dict[str, Any]],
        progress: Callable[[int], None] | None = None,
    ) -> EvalResult:
        """Predict every valid row of `batches`, then score the examples that have a reference.

        `progress(n)` is called after each batch with its number of valid rows.
        """
        records: list[dict[str, Any]] = []
        missing_images = 0
        for batch in batches:
            rows = _valid_rows(batch)
            if not rows:
                continue
            outputs = self.predict(model, params, batch, rows)
            for row, output in zip(rows, outputs):
                record = {
                    "id": _meta(batch, "id", row),
                    "instruction": _meta(batch, "instruction", row),
                    "prediction": _jsonable(output["prediction"]),
                    "reference": _jsonable(self.reference(batch, row)),
                }
                record.update({k: _jsonable(v) for k, v in output.items() if k != "prediction"})
                error = _meta(batch, "error", row)
                if error:
                    missing_images += 1
                    record["error"] = error
                records.append(record)
            if progress is not None:
                progress(len(rows))
        scored = [r for r in records if r["reference"] not in (None, [])]
        metrics: dict[str, float] = {
            "num_examples": len(records),
            "num_scored": len(scored),
            "missing_images": missing_images,
            f"missing_{self.reference_field}": len(records) - len(scored),
        }
        if len(scored) < len(records):
            logger.warning(
                "%s: %d of %d examples have no %r; the metric covers the other %d",
                self.settings.dataset,
                len(records) - len(scored),
                len(records),
                self.reference_field,
                len(scored),
            )
        if scored:
            result = metrics_lib.compute(
                self.settings.metric,
                [self._metric_input(r) for r in scored],
                [r["reference"] for r in scored],
            )
            metrics[self.settings.metric] = result["score"]
            metrics.update(
                {k: v for k, v in result.items() if k not in ("metric", "score", "per_example")}
            )
            for record, value in zip(scored, result["per_example"]):
                record["score"] = value
        return EvalResult(metrics, records)

    def _metric_input(self, record: dict[str, Any]) -> Any:
        return record["prediction"]


class GenerateEvaluator(Evaluator):
    """Beam search / greedy decoding, decoded with the LM tokenizer (VQA, captions, GQA, VSR...)."""

    def predict(
        self, model: Any, params: Any, batch: dict[str, Any], rows: list[int]
    ) -> list[dict[str, Any]]:
        """Decoded text per row ({"prediction": str})."""
        s = self.settings
        text = model.config.text
        tokens = decode.generate(
            model,
            params,
            batch,
            max_new_tokens=s.max_new_tokens,
            min_new_tokens=s.min_new_tokens,
            num_beams=s.num_beams,
            length_penalty=s.length_penalty,
            repetition_penalty=s.repetition_penalty,
        )
        texts = decode.decode_text(np.asarray(tokens)[rows], self.tokenizer, text.eos_token_id)
        return [{"prediction": t} for t in texts]


class RankEvaluator(Evaluator):
    """Score candidates by LM likelihood (ScienceQA, IconQA, A-OKVQA MC, VisDial, HatefulMemes...)."""

    def _candidates(self, batch: dict[str, Any], row: int) -> list[str]:
        if self.settings.candidates:
            return list(self.settings.candidates)
        for key in ("choices", "answer_options"):
            value = _meta(batch, key, row)
            if value:
                return list(value)
        return []

    def predict(
        self, model: Any, params: Any, batch: dict[str, Any], rows: list[int]
    ) -> list[dict[str, Any]]:
        """Candidate scores per row and the prediction the metric wants (see `_prediction`)."""
        s = self.settings
        size = len(batch["input_ids"])
        per_row = [self._candidates(batch, i) if i in rows else [] for i in range(size)]
        if not any(per_row[i] for i in rows):
            raise ValueError(
                f"dataset {s.dataset!r}: rank mode needs candidates (example 'choices'/"
                f"'answer_options' or settings.candidates); batch ids "
                f"{[_meta(batch, 'id', i) for i in rows][:3]} have none"
            )
        width = max(len(c) for c in per_row)
        width = 1 << (width - 1).bit_length()  # a power of two: few distinct compiled shapes
        labels = ranking.candidate_labels(per_row, self.tokenizer, s.candidate_max_len, width)
        scores = np.asarray(
            ranking.score_candidates(
                model,
                params,
                batch,
                labels,
                length_normalize=s.length_normalize,
                chunk_size=s.candidate_chunk,
            )
        )
        outputs = []
        for i in rows:
            count = len(per_row[i])
            row_scores = scores[i, :count]
            best = int(np.argmax(row_scores)) if count else -1
            outputs.append(self._prediction(per_row[i], row_scores, best))
        return outputs

    def _prediction(self, candidates: list[str], scores: np.ndarray, best: int) -> dict[str, Any]:
        metric = self.settings.metric
        out: dict[str, Any] = {"scores": [float(x) for x in scores]}
        if metric == "mrr":
            out["prediction"] = best
        elif metric == "auc":  # P(first candidate) within the pair, e.g. P("yes" | {"yes", "no"})
            shifted = np.exp(scores - np.max(scores))
            out["prediction"] = float(shifted[0] / shifted.sum())
        elif metric == "accuracy" and not self.settings.candidates:
            out["prediction"], out["answer"] = best, candidates[best] if best >= 0 else ""
        else:
            out["prediction"] = candidates[best] if best >= 0 else ""
        return out

    def reference(self, batch: dict[str, Any], row: int) -> Any:
        """Like `Evaluator.reference`, but a fixed candidate list compares answer text."""
        if self.settings.metric == "accuracy" and self.settings.candidates:
            answers = _meta(batch, "answers", row)  # fixed-list classification (VSR): compare text
            return answers[0] if answers else None
        return super().reference(batch, row)

    def _metric_input(self, record: dict[str, Any]) -> Any:
        return record["scores"] if self.settings.metric == "mrr" else record["prediction"]


EVALUATORS: dict[str, type[Evaluator]] = {"generate": GenerateEvaluator, "rank": RankEvaluator}


def make_evaluator(settings: EvalSettings, tokenizer: Any) -> Evaluator:
    """The evaluator class of `settings.eval_mode`, for the dataset those settings describe."""
    if settings.eval_mode not in EVALUATORS:
        raise ValueError(
            f"dataset {settings.dataset!r}: unknown eval mode {settings.eval_mode!r}; "
            f"known: {sorted(EVALUATORS)}"
        )
    return EVALUATORS[settings.eval_mode](settings, tokenizer)


def settings_for(
    dataset: str, overrides: dict[str, Any] | None = None, registry_name: str | None = None
) -> EvalSettings:
    """Registry defaults (metric, mode, decoding) for `dataset`, then `overrides` (config)."""
    from data_pipelines import registry

    spec = registry.get(registry_name or dataset)
    d = spec.decoding
    values: dict[str, Any] = dict(
        dataset=dataset,
        metric=spec.metric,
        eval_mode=spec.eval_mode,
        num_beams=d.num_beams,
        max_new_tokens=d.max_new_tokens,
        min_new_tokens=d.min_new_tokens,
        length_penalty=d.length_penalty,
    )
    overrides = dict(overrides or {})
    known = {f.name for f in dataclasses.fields(EvalSettings)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(
            f"eval overrides for {dataset!r}: unknown fields {unknown}; known: {sorted(known)}"
        )
    if "candidates" in overrides:
        overrides["candidates"] = tuple(overrides["candidates"])
    values.update(overrides)
    return EvalSettings(**values)


__all__ = [
    "EvalSettings",
    "EvalResult",
    "Evaluator",
    "GenerateEvaluator",
    "RankEvaluator",
    "EVALUATORS",
    "make_evaluator",
    "settings_for",
]
