"""The embedded demo: deterministic, in the public formats, and learnable from pixels."""

import filecmp
import json
import os

import numpy as np
import pytest
from PIL import Image

from configs import data_demo
from data_pipelines import demo_data, formats, sources


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("demo"))
    return root, demo_data.write_demo_dataset(root, num_train=300, num_eval=60, seed=0)


def test_deterministic_in_the_seed(demo, tmp_path):
    root, paths = demo
    again = demo_data.write_demo_dataset(str(tmp_path / "a"), num_train=300, num_eval=60, seed=0)
    other = demo_data.write_demo_dataset(str(tmp_path / "b"), num_train=300, num_eval=60, seed=1)
    for key in ("vqa_train", "caption_eval", "mc_eval"):
        assert open(paths[key]).read() == open(again[key]).read()
        assert open(paths[key]).read() != open(other[key]).read()
    image = os.path.join("train", "train_000007.png")
    assert filecmp.cmp(
        os.path.join(paths["image_root"], image),
        os.path.join(again["image_root"], image),
        shallow=False,
    )


def test_files_parse_with_the_public_format_parsers(demo):
    _, paths = demo
    captions = formats.parse("coco_caption", paths["caption_train"], paths["image_root"])
    assert len(captions) == 300 and all(len(r["captions"]) == 3 for r in captions)
    vqa = formats.parse("vqav2", paths["vqa_eval"], paths["image_root"])
    assert len(vqa) == 180 and all(
        len(r["answers"]) == 10 and os.path.exists(r["image"]) for r in vqa
    )
    mc = formats.parse("aokvqa", paths["mc_train"], paths["image_root"])
    assert all(
        len(r["choices"]) == 4 and r["choices"][r["answer_index"]] == r["answers"][0] for r in mc
    )
    train_images = {
        r["image"] for r in formats.parse("vqav2", paths["vqa_train"], paths["image_root"])
    }
    assert not train_images & {r["image"] for r in vqa}  # held-out images are new


def test_answers_are_true_of_the_pixels(demo):
    """The color answer is the color of the non-background pixels; the count answer is the number
    of connected blobs."""
    from scipy import ndimage

    _, paths = demo
    for row in json.load(open(paths["vqa_eval"]))[:60]:
        pixels = np.asarray(Image.open(os.path.join(paths["image_root"], row["image"])), np.int32)
        shape_pixels = pixels[(np.abs(pixels - demo_data.BACKGROUND).sum(-1) > 60)]
        if "color" in row["question"]:
            mean = shape_pixels.mean(0)
            nearest = min(demo_data.COLORS, key=lambda c: np.abs(mean - demo_data.COLORS[c]).sum())
            assert nearest == row["answer"][0]
        if "how many" in row["question"]:
            mask = np.abs(pixels - demo_data.BACKGROUND).sum(-1) > 60
            assert ndimage.label(mask)[1] == int(row["answer"][0])


def test_short_answers_are_learnable_by_a_tiny_model(demo):
    """A one-hidden-layer MLP on 16x16 pixels + question type goes from chance to >= 80% held-out."""
    from sklearn.neural_network import MLPClassifier

    _, paths = demo

    def load(split):
        features, answers = [], []
        for row in json.load(open(paths[f"vqa_{split}"])):
            image = Image.open(os.path.join(paths["image_root"], row["image"])).resize(
                (16, 16), Image.BICUBIC
            )
            kind = [
                "color" in row["question"],
                "many" in row["question"],
                "shape" in row["question"],
            ]
            features.append(np.concatenate([np.asarray(image, np.float32).ravel() / 255, kind]))
            answers.append(row["answer"][0])
        return np.stack(features), np.array(answers)

    x_train, y_train = load("train")
    x_eval, y_eval = load("eval")
    chance = max(np.mean(y_eval == a) for a in set(y_eval))
    model = MLPClassifier(hidden_layer_sizes=(64,), max_iter=200, random_state=0).fit(
        x_train, y_train
    )
    accuracy = float((model.predict(x_eval) == y_eval).mean())
    assert chance < 0.3 and accuracy >= 0.8, (chance, accuracy)


def test_ensure_demo_dataset_reuses_a_matching_root(tmp_path):
    first = demo_data.ensure_demo_dataset(str(tmp_path), 5, 2, 0)
    stamp = os.path.getmtime(first["vqa_train"])
    assert demo_data.ensure_demo_dataset(str(tmp_path), 5, 2, 0) == first
    assert os.path.getmtime(first["vqa_train"]) == stamp


def test_demo_config_entries_render_their_data_on_first_use(tmp_path):
    root = tmp_path / "fresh"
    config = data_demo.get_config(f"root={root}", num_train=6, num_eval=2)
    assert not root.exists()
    records = sources.load_records(config.datasets[0])  # demo_vqa: 3 questions per scene
    assert len(records) == 18 and os.path.isfile(records[0]["image"])
    stamp = os.path.getmtime(root / "manifest.json")
    assert len(sources.load_records(config.eval_datasets[0])) == 6  # same files, not re-rendered
    assert os.path.getmtime(root / "manifest.json") == stamp
    with pytest.raises(KeyError, match=r"unknown generate kind 'shapes'.*demo_shapes"):
        sources.load_records({**config.datasets[0], "generate": {"kind": "shapes"}})
