"""A page of sample predictions per evaluation, next to its predictions file.

`write_predictions_page` turns WORKDIR/eval/predictions/<evaluation>/<checkpoint>.jsonl's records
into <checkpoint>.html beside it: a sample of examples (evenly spread over the split), each with
its image or clip frames, the prompt, the prediction, the references, the per-example score and
whether it is correct. One self-contained file (pictures embedded; data_pipelines/pages.py), so
it opens offline, also after copying it out of a bucket.

Correct or not, by metric: VQA-style accuracies (vqa_accuracy, ivqa_accuracy, accuracy,
exact_match) mark a full score correct, a partial one (VQAv2's min(#humans/3, 1)) partly
correct, 0 wrong; MRR (Visual Dialog) marks a top-ranked answer correct; AUC (HatefulMemes)
marks P(positive) >= 0.5 agreeing with the label correct; CIDEr (captions) has no right or
wrong: the page shows the score only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from data_pipelines import images, pages

ACCURACY_METRICS = ("vqa_accuracy", "ivqa_accuracy", "accuracy", "exact_match")


def verdict(record: Mapping[str, Any], metric: str) -> str | None:
    """ "correct", "partial", "wrong" or None (no right or wrong: captions) for one prediction
    record ({"prediction", "reference", "score", ...} as the eval job writes it)."""
    if record.get("prediction") is None:
        return "wrong" if record.get("nonfinite") else None
    score = record.get("score")
    if metric == "auc":
        return (
            "correct"
            if (float(record["prediction"]) >= 0.5) == bool(record["reference"])
            else "wrong"
        )
    if score is None or metric not in ACCURACY_METRICS + ("mrr",):
        return None
    if float(score) >= 1.0:
        return "correct"
    return "partial" if float(score) > 0 and metric != "mrr" else "wrong"


def sample(count: int, limit: int) -> list[int]:
    """`limit` indices evenly spread over range(count) (all of them when count <= limit)."""
    if count <= limit:
        return list(range(count))
    return [(i * count) // limit for i in range(limit)]


def _source(
    record: Mapping[str, Any],
    position: int,
    records: Sequence[Mapping[str, Any]],
    by_id: dict[str, int],
    aligned: bool,
) -> Mapping[str, Any] | None:
    """The data record a prediction came from: by its `index` in the split, else by its
    position when the predictions are the split's in order (`aligned`), else by id."""
    index = record.get("index")
    if isinstance(index, int) and 0 <= index < len(records):
        return records[index]
    if aligned:
        return records[position]
    found = by_id.get(str(record.get("id")))
    return None if found is None else records[found]


def write_predictions_page(
    predictions_path: str,
    predictions: Sequence[Mapping[str, Any]],
    records: Sequence[Mapping[str, Any]] | None,
    *,
    evaluation: str,
    metric: str,
    checkpoint: str = "",
    metrics: Mapping[str, Any] | None = None,
    limit: int = 50,
    num_frames: int = 4,
) -> str:
    """Write the page of `predictions` (the records written to `predictions_path`, a .jsonl)
    beside it as .html; returns its path.

    `records`: the evaluated split's data records (`data_pipelines.sources.load_records(entry)`,
    in the split's order), where the pictures come from; None for a page without them. `metric`:
    the evaluation's metric (see the module docstring); `metrics`: its results, for the summary;
    `limit`: how many examples the page shows.
    """
    by_id: dict[str, int] = {}
    for position, data in enumerate(records or ()):
        by_id.setdefault(str(data.get("id")), position)
    # The eval job writes one prediction per example, in the split's order.
    aligned = records is not None and len(records) == len(predictions)
    cards = []
    for position in sample(len(predictions), limit):
        record = predictions[position]
        pictures, note = [], str(record.get("error") or "")
        data = _source(record, position, records or (), by_id, aligned)
        if data is not None:
            try:
                pictures = pages.media_pictures(data, num_frames)
            except images.BadImageError as error:
                note = note or str(error)
        texts = [
            ("prompt", pages.text(record.get("instruction"))),
            ("prediction", pages.text(record.get("prediction"))),
            ("references", pages.text(record.get("reference"))),
        ]
        if record.get("score") is not None:
            texts.append((f"score ({metric})", pages.text(record.get("score"))))
        title = f"{evaluation} {record.get('id', '')}"
        cards.append(pages.Card(title, pictures, texts, verdict(record, metric), note))
    verdicts = [card.verdict for card in cards if card.verdict]
    summary = [f"checkpoint {checkpoint}: {len(cards)} of {len(predictions)} predictions shown"]
    if metrics:
        summary.append("metrics: " + ", ".join(f"{k} {pages.text(v)}" for k, v in metrics.items()))
    if verdicts:
        summary.append(
            f"of those shown: {verdicts.count('correct')} correct, "
            f"{verdicts.count('partial')} partly correct, {verdicts.count('wrong')} wrong"
        )
    stem = (
        predictions_path[: -len(".jsonl")]
        if predictions_path.endswith(".jsonl")
        else predictions_path
    )
    title = f"{evaluation}: sample predictions of {checkpoint}" if checkpoint else evaluation
    return pages.write(stem + ".html", title, summary, cards)
