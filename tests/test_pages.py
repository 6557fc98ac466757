"""The HTML pages: `python -m data_pipelines.preview --out=DIR` (training examples) and the eval
job's page of sample predictions. Each page is parsed (html.parser): every picture it shows must
be there (embedded, and decode as an image), and every example's texts on it, escaped."""

import base64
import html.parser
import io
import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from data_pipelines import layouts, miniature, sources
from data_pipelines import pages as data_pages
from ib_jax.eval import pages as eval_pages

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Page(html.parser.HTMLParser):
    """The pictures (img src), the cards (their class) and the text of a page."""

    def __init__(self, path: str):
        super().__init__()
        self.pictures, self.cards, self.text = [], [], []
        with open(path, encoding="utf-8") as f:
            self.feed(f.read())
        self.text = "\n".join(self.text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.pictures.append(attrs["src"])
        if tag == "div" and "card" in attrs.get("class", "").split():
            self.cards.append(attrs["class"].split())

    def handle_data(self, data):
        self.text.append(data)


def _decodes(src: str, page_dir: str) -> tuple[int, int]:
    """The size of the picture `src` names: an embedded data: URI or a file beside the page."""
    if src.startswith("data:image/"):
        data = base64.b64decode(src.split(",", 1)[1], validate=True)
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return image.size
    path = os.path.join(page_dir, src)
    assert os.path.isfile(path), f"the page references {src}, which does not exist"
    with Image.open(path) as image:
        return image.size


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("mini"))
    miniature.write_miniature(root)
    return root


@pytest.mark.parametrize(
    "train, pictures_per_example", [("coco_caption+scienceqa", 1), ("msvd_qa", 4)]
)
def test_preview_writes_a_page_of_the_examples(mini, tmp_path, train, pictures_per_example):
    out = tmp_path / "preview"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "data_pipelines.preview",
            f"--config=configs/instructblip_flant5xl.py:root={mini},train={train}",
            "--num_examples=3",
            f"--out={out}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with open(out / "preview.jsonl") as f:
        lines = [json.loads(line) for line in f]
    examples = [line for line in lines if "dataset" in line]
    assert len(examples) == 3 and "mixture" in lines[-1]
    page = _Page(str(out / "preview.html"))
    assert len(page.cards) == 3
    assert len(page.pictures) == 3 * pictures_per_example
    for src in page.pictures:
        assert _decodes(src, str(out)) == (224, 224)  # the model's input size
    for example in examples:
        assert example["instruction"] in page.text and example["target"] in page.text


def _predictions(records, correct_every: int = 2) -> list[dict]:
    """Prediction records as the eval job writes them, for `records` of a VQA split."""
    out = []
    for index, record in enumerate(records):
        right = index % correct_every == 0
        out.append(
            {
                "index": index,
                "id": record["id"],
                "instruction": f"Question: {record['question']} Short answer:",
                "prediction": record["answers"][0] if right else "<b>not</b> & this",
                "reference": record["answers"],
                "score": 1.0 if right else 0.0,
            }
        )
    return out


@pytest.mark.parametrize(
    "name, pictures_per_example, with_index",
    [("gqa", 1, True), ("gqa", 1, False), ("msvd_qa", 4, False)],
)
def test_the_eval_page_shows_each_sampled_prediction_with_its_pictures(
    mini, tmp_path, name, pictures_per_example, with_index
):
    """The pictures of each shown prediction's own example: found by the prediction's `index`,
    or (as the eval job writes them, in the split's order, without one) by its position."""
    records = sources.load_records(layouts.entry(name, "eval", mini))
    predictions = _predictions(records)
    if not with_index:
        for prediction in predictions:
            del prediction["index"]
    path = tmp_path / "predictions" / name / "step_8.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps(p) + "\n" for p in predictions))
    written = eval_pages.write_predictions_page(
        str(path),
        predictions,
        records,
        evaluation=name,
        metric="vqa_accuracy",
        checkpoint="step_8",
        metrics={"vqa_accuracy": 0.5},
        limit=3,
    )
    assert written == str(tmp_path / "predictions" / name / "step_8.html")
    page = _Page(written)
    positions = eval_pages.sample(len(predictions), 3)
    shown = [predictions[i] for i in positions]
    assert len(page.cards) == len(shown) == min(3, len(predictions))
    assert len(page.pictures) == len(shown) * pictures_per_example
    expected = [uri for i in positions for uri in data_pages.media_pictures(records[i])]
    assert page.pictures == expected
    for src in page.pictures:
        _decodes(src, str(path.parent))
    for prediction, classes in zip(shown, page.cards):
        assert ("correct" if prediction["score"] == 1.0 else "wrong") in classes
        assert prediction["instruction"] in page.text and str(prediction["id"]) in page.text
    if any(p["score"] == 0.0 for p in shown):  # markup in a prediction is text, not markup
        assert "<b>not</b> & this" in page.text
    assert "<b>" not in open(written).read()


@pytest.mark.parametrize(
    "record, metric, expected",
    [
        ({"prediction": "yes", "reference": ["yes"], "score": 1.0}, "vqa_accuracy", "correct"),
        ({"prediction": "yes", "reference": ["yes"], "score": 0.6}, "vqa_accuracy", "partial"),
        ({"prediction": "no", "reference": ["yes"], "score": 0.0}, "exact_match", "wrong"),
        ({"prediction": 3, "reference": 0, "score": 1.0}, "mrr", "correct"),
        ({"prediction": 3, "reference": 0, "score": 0.5}, "mrr", "wrong"),
        ({"prediction": 0.8, "reference": 1, "score": 0.8}, "auc", "correct"),
        ({"prediction": 0.8, "reference": 0, "score": 0.8}, "auc", "wrong"),
        ({"prediction": "a dog", "reference": ["a cat"], "score": 0.7}, "cider", None),
        ({"prediction": None, "reference": ["yes"], "nonfinite": True}, "vqa_accuracy", "wrong"),
    ],
)
def test_correct_or_not_by_metric(record, metric, expected):
    assert eval_pages.verdict(record, metric) == expected
