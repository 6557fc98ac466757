"""Per-dataset evaluators: batches of `data_pipelines.pipeline.build_eval_dataset` -> metric + predictions.

Keyed by the declared evaluation's mode (`EVALUATORS["generate" | "rank"]`, `config.evals.<name>.mode`,
ib_jax/contract/config.py `Evaluation`); the metric decides
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
`missing_images`), examples without the reference field the metric needs are counted in
`missing_<field>`, and examples whose logits or candidate scores were NaN or infinite (flagged in
the jitted step) are counted in `num_nonfinite`, their prediction null; the latter two are left
out of `num_scored`, which is reported next to `num_examples`. `Evaluator.run` (ib_jax/eval/runner.py)
runs the batches on every process in lockstep and scores the whole split once.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from ib_jax import decode
from ib_jax.contract.batch import IGNORE_INDEX
from ib_jax.contract.config import Evaluation
from ib_jax.eval import ranking, runner
from ib_jax.eval.runner import EvalResult

# candidate_max_len = 0 ranks candidates whole, as LAVIS does (`_predict_class` tokenizes them
# without truncation); label lengths round up to powers of two, for few compiled shapes.
_LONGEST_CANDIDATE = 4096


def _power_of_two(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


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


def _meta(batch: dict[str, Any], key: str, row: int) -> Any:
    values = batch.get("meta", {}).get(key)
    return None if values is None else values[row]


class Evaluator(abc.ABC):
    """Subclasses implement `predict(program, batch, rows, width) -> per-row predictions` (and
    `batch_width` when the step's shapes depend on the batch); `run` does the bookkeeping.
    A width is a tuple of ints, agreed across processes element by element (the largest)."""

    def __init__(self, settings: Evaluation, tokenizer: Any):
        self.settings = settings
        self.tokenizer = tokenizer  # LM tokenizer: .decode(ids), .encode_target(text, max_len)
        key = (settings.mode, settings.metric)
        if key not in _REFERENCE_FIELD:
            raise ValueError(
                f"dataset {settings.dataset!r}: no evaluator for mode {key[0]!r} with metric "
                f"{key[1]!r}; supported: {sorted(_REFERENCE_FIELD)}"
            )
        self.reference_field = _REFERENCE_FIELD[key]

    def batch_width(self, batch: dict[str, Any], rows: list[int]) -> tuple[int, ...]:
        """What the step's shapes need from this process's batch ((candidates, candidate
        tokens) for ranking; (0, 0) for generation); the processes run the step with the largest
        of each. Bad rows raise here, before any process enters the collective step."""
        del batch, rows
        return (0, 0)

    @abc.abstractmethod
    def predict(
        self, program: Any, batch: dict[str, Any], rows: list[int], width: tuple[int, ...]
    ) -> list[dict[str, Any]]:
        """Per-row outputs for the batch rows `rows`: {"prediction": ..., "nonfinite": bool, other
        fields kept}. Called on every process for every batch (also with no valid row).

        `program`: an `ib_jax.eval.program.InferenceProgram`; `batch`: this process's rows of one
        eval batch (model inputs [b, ...], `valid` [b], host-side `meta`); `width`: the agreed
        `batch_width`.
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
        program: Any,
        batches: Iterable[dict[str, Any]],
        progress: Callable[[int], None] | None = None,
        max_bad_fraction: float = 1.0,
    ) -> EvalResult:
        """Predict every valid row of `batches` (this process's shard), gather the predictions of
        all processes in the dataset's order and score them once (see ib_jax/eval/runner.py).

        `progress(n)` is called after each batch with its number of valid rows; more than
        `max_bad_fraction` of the examples with non-finite outputs fails the dataset.
        """
        return runner.run(self, program, batches, progress, max_bad_fraction)

    def metric_input(self, record: dict[str, Any]) -> Any:
        """What the metric reads from a prediction record."""
        return record["prediction"]


class GenerateEvaluator(Evaluator):
    """Beam search / greedy decoding, decoded with the LM tokenizer (VQA, captions, GQA, VSR...)."""

    def predict(
        self, program: Any, batch: dict[str, Any], rows: list[int], width: tuple[int, ...]
    ) -> list[dict[str, Any]]:
        """Decoded text per row ({"prediction": str, "nonfinite": bool})."""
        s = self.settings
        tokens, nonfinite = program.generate(
            batch,
            max_new_tokens=s.max_new_tokens,
            min_new_tokens=s.min_new_tokens,
            num_beams=s.num_beams,
            length_penalty=s.length_penalty,
            repetition_penalty=s.repetition_penalty,
            penalize_prompt=s.penalize_prompt,
        )
        eos = program.model.config.text.eos_token_id
        texts = decode.decode_text(tokens[rows], self.tokenizer, eos)
        return [{"prediction": t, "nonfinite": bool(nonfinite[i])} for t, i in zip(texts, rows)]


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

    def batch_width(self, batch: dict[str, Any], rows: list[int]) -> tuple[int, ...]:
        """Candidates per row for this batch: a power of two (few distinct compiled shapes)."""
        per_row = [self._candidates(batch, i) for i in rows]
        if rows and not any(per_row):
            raise ValueError(
                f"dataset {self.settings.dataset!r}: rank mode needs candidates (example "
                "'choices'/'answer_options' or settings.candidates); batch ids "
                f"{[_meta(batch, 'id', i) for i in rows][:3]} have none"
            )
        width = max((len(c) for c in per_row), default=0)
        tokens = self.settings.candidate_max_len or _power_of_two(
            max((self._token_count(c) for row in per_row for c in row), default=1)
        )
        return (1 << (width - 1).bit_length() if width else 0, tokens)

    def _token_count(self, candidate: str) -> int:
        """A candidate's label length uncut (its `</s>` included where the LM's format ends
        candidates with it)."""
        labels = self.tokenizer.encode_candidate(candidate, _LONGEST_CANDIDATE)
        return int((labels != IGNORE_INDEX).sum())

    def predict(
        self, program: Any, batch: dict[str, Any], rows: list[int], width: tuple[int, ...]
    ) -> list[dict[str, Any]]:
        """Candidate scores per row and the prediction the metric wants (see `_prediction`)."""
        s = self.settings
        size = len(batch["input_ids"])
        per_row = [self._candidates(batch, i) if i in rows else [] for i in range(size)]
        count, tokens = width
        labels = ranking.candidate_labels(per_row, self.tokenizer, tokens, count)
        scores, nonfinite = program.rank(
            batch, labels, length_normalize=s.length_normalize, chunk_size=s.candidate_chunk
        )
        outputs = []
        for i in rows:
            count = len(per_row[i])
            row_scores = scores[i, :count]
            best = int(np.argmax(row_scores)) if count else -1
            output = self._prediction(per_row[i], row_scores, best)
            output["nonfinite"] = bool(nonfinite[i])
            outputs.append(output)
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

    def metric_input(self, record: dict[str, Any]) -> Any:
        """Visual Dialog's MRR reads all candidate scores; the other metrics the prediction."""
        return record["scores"] if self.settings.metric == "mrr" else record["prediction"]


EVALUATORS: dict[str, type[Evaluator]] = {"generate": GenerateEvaluator, "rank": RankEvaluator}


def make_evaluator(settings: Evaluation, tokenizer: Any) -> Evaluator:
    """The evaluator class of `settings.mode`, for the evaluation those settings declare."""
    if settings.mode not in EVALUATORS:
        raise ValueError(
            f"evaluation {settings.name!r}: unknown mode {settings.mode!r}; "
            f"known: {sorted(EVALUATORS)}"
        )
    return EVALUATORS[settings.mode](settings, tokenizer)


__all__ = [
    "EvalResult",
    "Evaluator",
    "GenerateEvaluator",
    "RankEvaluator",
    "EVALUATORS",
    "make_evaluator",
]
