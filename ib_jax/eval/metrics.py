"""Evaluation metrics for the paper's datasets, keyed by the names the dataset registry uses.

Every metric takes parallel lists (one prediction and one reference per example) and returns
`MetricResult`: the corpus score plus the per-example values (for the predictions dump). Scores are
fractions in [0, 1] (CIDEr in pycocoevalcap's own unit, ~0-10); multiply by 100 for the paper's
tables.

| name            | prediction                  | reference                       | used by                         |
|-----------------|-----------------------------|---------------------------------|---------------------------------|
| `vqa_accuracy`  | answer str                  | list of human answers (10)      | VQAv2, OKVQA, VizWiz, TextVQA   |
| `cider`         | caption str                 | list of reference captions      | COCO, NoCaps, Flickr30K         |
| `exact_match`   | answer str                  | answer str                      | GQA, MSVD-QA, MSRVTT-QA         |
| `accuracy`      | class index / label / str   | same type                       | ScienceQA, IconQA, VSR          |
| `auc`           | score (P(positive))         | 0/1 label                       | HatefulMemes                    |
| `mrr`           | 100 candidate scores        | gt_index                        | Visual Dialog                   |
| `ivqa_accuracy` | answer str                  | list of 5 human answers         | iVQA                            |
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from ib_jax.contract.metrics import METRIC_NAMES
from ib_jax.eval.vqa_normalize import normalize_vqa_answer, process_punctuation

# pycocoevalcap's own output is logged under its name: a library's line, not the job's.
_coco_logger = logging.getLogger("pycocoevalcap")

# ---------------------------------------------------------------------------------------------
# Result type and input checks.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MetricResult:
    """`score`: corpus-level value; `per_example`: one value per example (same order as input);
    `extras`: secondary numbers (e.g. recall@k for Visual Dialog)."""

    name: str
    score: float
    per_example: list[float]
    extras: dict[str, float] = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """{"metric", "score", "per_example", **extras}: the form `compute` returns."""
        return {
            "metric": self.name,
            "score": self.score,
            "per_example": self.per_example,
            **self.extras,
        }


def _check_lengths(name: str, predictions: Sequence[Any], references: Sequence[Any]) -> None:
    if len(predictions) != len(references):
        raise ValueError(
            f"metric '{name}': {len(predictions)} predictions but "
            f"{len(references)} references; they must be parallel lists"
        )
    if not predictions:
        raise ValueError(f"metric '{name}': no examples to score")


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values))


# ---------------------------------------------------------------------------------------------
# Metrics.
# ---------------------------------------------------------------------------------------------


def vqa_accuracy(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> MetricResult:
    """Official VQA accuracy: min(#humans that said it / 3, 1), averaged over the leave-one-out
    subsets of the human answers (10 subsets of 9 for VQAv2).

    As in the official script, the references are taken as released (already normalized by the
    dataset authors) and only get punctuation processing, and only when the humans disagree.
    """
    _check_lengths("vqa_accuracy", predictions, references)
    per_example = []
    for index, (prediction, answers) in enumerate(zip(predictions, references)):
        if not answers:
            raise ValueError(f"metric 'vqa_accuracy': example {index} has no reference answers")
        predicted = normalize_vqa_answer(prediction)
        gt = list(answers)
        if len(set(gt)) > 1:
            gt = [process_punctuation(a) for a in gt]
        subset_scores = []
        for left_out in range(len(gt)):
            matches = sum(1 for j, a in enumerate(gt) if j != left_out and a == predicted)
            subset_scores.append(min(1.0, matches / 3.0))
        per_example.append(_mean(subset_scores))
    return MetricResult("vqa_accuracy", _mean(per_example), per_example)


def ivqa_accuracy(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> MetricResult:
    """iVQA accuracy (Just Ask, Yang et al. 2021): min(#annotators that gave the answer / 2, 1)
    over the 5 answers. Both sides get the VQA normalization, since iVQA answers are raw text."""
    _check_lengths("ivqa_accuracy", predictions, references)
    per_example = []
    for index, (prediction, answers) in enumerate(zip(predictions, references)):
        if not answers:
            raise ValueError(f"metric 'ivqa_accuracy': example {index} has no reference answers")
        predicted = normalize_vqa_answer(prediction)
        matches = sum(1 for a in answers if normalize_vqa_answer(a) == predicted)
        per_example.append(min(1.0, matches / 2.0))
    return MetricResult("ivqa_accuracy", _mean(per_example), per_example)


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> MetricResult:
    """1 if the normalized prediction equals the normalized answer (GQA, MSVD/MSRVTT top-1).
    A list reference (e.g. `answers` with one element) is accepted: any element may match."""
    _check_lengths("exact_match", predictions, references)
    per_example = []
    for prediction, reference in zip(predictions, references):
        options = [reference] if isinstance(reference, str) else list(reference)
        predicted = normalize_vqa_answer(prediction)
        per_example.append(float(any(normalize_vqa_answer(r) == predicted for r in options)))
    return MetricResult("exact_match", _mean(per_example), per_example)


def accuracy(predictions: Sequence[Any], references: Sequence[Any]) -> MetricResult:
    """Plain accuracy: equality of labels/indices; strings compare case- and space-insensitively
    (e.g. a generated "True " against VSR's "true")."""
    _check_lengths("accuracy", predictions, references)

    def canon(value: Any) -> Any:
        """The comparable form: stripped lowercase text, bools and numpy ints as int."""
        if isinstance(value, str):
            return value.strip().lower()
        if isinstance(value, (bool, np.bool_)):
            return int(value)
        if isinstance(value, (np.integer,)):
            return int(value)
        return value

    per_example = [float(canon(p) == canon(r)) for p, r in zip(predictions, references)]
    return MetricResult("accuracy", _mean(per_example), per_example)


def auc(predictions: Sequence[float], references: Sequence[int]) -> MetricResult:
    """ROC AUC (HatefulMemes) via scikit-learn; predictions are scores for the positive class.
    Per-example values are the scores themselves (AUC has no per-example decomposition)."""
    from sklearn.metrics import roc_auc_score

    _check_lengths("auc", predictions, references)
    labels = np.asarray(references)
    if len(np.unique(labels)) < 2:
        raise ValueError(
            "metric 'auc': references contain a single class "
            f"({np.unique(labels).tolist()}); AUC needs both 0 and 1 labels"
        )
    scores = np.asarray(predictions, dtype=np.float64)
    return MetricResult("auc", float(roc_auc_score(labels, scores)), scores.tolist())


def scores_to_ranks(scores: np.ndarray) -> np.ndarray:
    """[N, C] candidate scores -> [N, C] 1-based ranks (1 = highest score).

    As in the official visdial evaluation (`scores_to_ranks`: sort descending, rank = position),
    tied candidates get distinct consecutive ranks. We use a stable sort, so among ties the
    candidate with the lower index ranks first; the official code uses torch.sort, whose tie
    order is unspecified, so this is the deterministic choice of the same rule.
    """
    order = np.argsort(-scores, axis=1, kind="stable")
    ranks = np.empty_like(order)
    rows = np.arange(scores.shape[0])[:, None]
    ranks[rows, order] = np.arange(1, scores.shape[1] + 1)[None, :]
    return ranks


def mrr(predictions: Sequence[Sequence[float]], references: Sequence[int]) -> MetricResult:
    """Visual Dialog: mean reciprocal rank of the ground-truth answer among its candidates, plus
    recall@{1,5,10} and mean rank in `extras`. `predictions[i]` are the candidate scores (100 in
    VisDial v1.0), `references[i]` the 0-based gt_index."""
    _check_lengths("mrr", predictions, references)
    scores = np.asarray(predictions, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(
            "metric 'mrr': predictions must be one list of candidate scores per "
            f"example with the same number of candidates; got shape {scores.shape}"
        )
    gt = np.asarray(references, dtype=np.int64)
    bad = np.flatnonzero((gt < 0) | (gt >= scores.shape[1]))
    if bad.size:
        raise ValueError(
            f"metric 'mrr': gt_index {gt[bad[0]]} of example {bad[0]} is outside "
            f"0..{scores.shape[1] - 1}"
        )
    gt_ranks = scores_to_ranks(scores)[np.arange(len(gt)), gt].astype(np.float64)
    reciprocal = (1.0 / gt_ranks).tolist()
    extras = {f"recall@{k}": float(np.mean(gt_ranks <= k)) for k in (1, 5, 10)}
    extras["mean_rank"] = float(np.mean(gt_ranks))
    return MetricResult("mrr", _mean(reciprocal), reciprocal, extras)


def cider(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> MetricResult:
    """Corpus CIDEr-D via pycocoevalcap (its PTB tokenizer, then `Cider`), as the COCO caption
    evaluation computes it. IDF comes from the references of the whole corpus, so the score of
    an example depends on the others: always score a full split at once."""
    _check_lengths("cider", predictions, references)
    if shutil.which("java") is None:
        raise RuntimeError(
            "metric 'cider': pycocoevalcap's PTBTokenizer runs Stanford CoreNLP "
            "and needs a `java` executable on PATH (e.g. apt-get install "
            "openjdk-17-jre-headless)"
        )
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    gts, res = {}, {}
    for index, (prediction, refs) in enumerate(zip(predictions, references)):
        if not refs:
            raise ValueError(f"metric 'cider': example {index} has no reference captions")
        gts[index] = [{"caption": r} for r in refs]
        res[index] = [{"caption": prediction}]
    tokenizer = PTBTokenizer()
    with _subprocess_stderr_to_log("pycocoevalcap PTBTokenizer"):
        gts, res = tokenizer.tokenize(gts), tokenizer.tokenize(res)
    score, per_image = Cider().compute_score(gts, res)
    # compute_score iterates the keys of gts in insertion order, i.e. example order.
    return MetricResult("cider", float(score), [float(s) for s in per_image])


@contextlib.contextmanager
def _subprocess_stderr_to_log(what: str) -> Iterator[None]:
    """Collect what child processes write to stderr (file descriptor 2) and log it at INFO.

    The PTB tokenizer's Java process prints a line per call ("PTBTokenizer tokenized 177 tokens
    at ...") straight to the terminal, around any logging configuration; captured here it goes to
    the job's log file. If the block raises, the captured text is logged as an error instead.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    failed = False
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode(errors="replace").strip()
            if text:
                _coco_logger.log(logging.ERROR if failed else logging.INFO, "%s: %s", what, text)


METRICS: dict[str, Callable[[Sequence[Any], Sequence[Any]], MetricResult]] = {
    "vqa_accuracy": vqa_accuracy,
    "cider": cider,
    "exact_match": exact_match,
    "accuracy": accuracy,
    "auc": auc,
    "mrr": mrr,
    "ivqa_accuracy": ivqa_accuracy,
}
# The contract names the metrics for the data side and the run configs; this table implements them.
assert tuple(METRICS) == METRIC_NAMES, "ib_jax.eval.metrics.METRICS vs ib_jax.contract.metrics"


def compute(
    metric_name: str, predictions: Sequence[Any], references: Sequence[Any]
) -> dict[str, Any]:
    """Score parallel lists with the named metric -> {"metric", "score", "per_example", ...}."""
    if metric_name not in METRICS:
        raise KeyError(f"unknown metric '{metric_name}'; known metrics: {sorted(METRICS)}")
    return METRICS[metric_name](predictions, references).as_dict()
