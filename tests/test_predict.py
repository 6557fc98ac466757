"""Prediction on your own images: `python -m ib_jax.predict` (ib_jax/predict/job.py) and the Python
API `ib_jax.predict`, on a tiny random model in the layout of a Hugging Face directory (converted
parameters + tokenizer files)."""

import json
import os
import re
import shutil

import numpy as np
import pytest

import ib_jax
from configs import finetune, tiny
from data_pipelines import demo_data
from ib_jax import export
from ib_jax.contract.model import from_config_dict
from ib_jax.convert import api
from ib_jax.predict import Decoding, Predictor, job, tokenizer_files
from tests.test_eval_sharded import random_params

README = os.path.join(os.path.dirname(__file__), "..", "README.md")
GREEDY = Decoding(num_beams=1, max_new_tokens=4, min_new_tokens=1)


def write_checkpoint(directory: str) -> str:
    """A converted tiny model with the demo tokenizers where an HF directory keeps them."""
    config = tiny.get_config()
    params = random_params(config, seed=3)
    api.save_converted(directory, from_config_dict(config.model), params)
    os.makedirs(os.path.join(directory, "qformer_tokenizer"))
    shutil.copy(demo_data.DEMO_VOCAB, os.path.join(directory, "qformer_tokenizer", "vocab.txt"))
    shutil.copy(demo_data.DEMO_SPM, os.path.join(directory, "spiece.model"))
    return directory


def write_scenes(root) -> None:
    """root/rows.jsonl: three rendered scenes, a missing image, a corrupt file (five rows)."""
    rng = np.random.default_rng(0)
    shapes = [("circle", "red"), ("square", "blue"), ("triangle", "green")]
    for i, (shape, color) in enumerate(shapes):
        demo_data.render_scene(shape, color, 1, rng).save(root / f"{i}.png")
    (root / "broken.png").write_bytes(b"not a png")
    rows = [{"image": f"{i}.png", "question": f"what color is shape {i}?"} for i in range(3)]
    rows.insert(1, {"image": "missing.png", "question": "what shape?"})
    rows.append({"image": "broken.png", "question": "what color?"})
    (root / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "tiny"))


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    write_scenes(root)
    return root


def test_tokenizer_files_are_found_in_the_hf_layout(checkpoint):
    vocab, spm = tokenizer_files(checkpoint)
    assert vocab.endswith("qformer_tokenizer/vocab.txt") and spm.endswith("spiece.model")


def test_one_row_per_input_row_in_order_with_errors_and_the_api_agrees(
    checkpoint, scenes, tmp_path
):
    out = tmp_path / "out" / "predictions.jsonl"
    rows = job.run(checkpoint, str(scenes / "rows.jsonl"), str(out), decoding=GREEDY, batch_size=8)
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert written == rows and len(rows) == 5
    assert [r["id"] for r in rows] == ["0", "1", "2", "3", "4"]
    assert [os.path.basename(r["image"]) for r in rows] == [
        "0.png",
        "missing.png",
        "1.png",
        "2.png",
        "broken.png",
    ]
    assert rows[1]["prompt"] == "what shape?"  # the row's instruction, verbatim
    assert "missing.png" in rows[1]["error"] and "broken.png" in rows[4]["error"]
    assert not any(rows[i].get("error") for i in (0, 2, 3))
    # The Python API on the same images and prompts gives the same text.
    model, params = ib_jax.load_pretrained(checkpoint)
    vocab, spm = tokenizer_files(checkpoint)
    good = [0, 2, 3]
    texts = ib_jax.predict(
        model,
        params,
        [rows[i]["image"] for i in good],
        [rows[i]["prompt"] for i in good],
        qformer_vocab=vocab,
        lm_spm=spm,
        num_beams=1,
        max_new_tokens=4,
    )
    assert texts == [rows[i]["output"] for i in good]
    assert len({r["output"] for r in rows}) > 1 and all(r["output"] for r in rows)


def test_folder_of_images_with_one_prompt_and_ranked_candidates(checkpoint, scenes, tmp_path):
    folder = tmp_path / "pics"
    folder.mkdir()
    for i in range(3):
        shutil.copy(scenes / f"{i}.png", folder / f"{i}.png")
    candidates = ["red", "blue", "green"]
    rows = job.run(
        checkpoint,
        str(folder),
        str(tmp_path / "ranked.jsonl"),
        prompt="what color is the shape?",
        candidates=candidates,
        batch_size=8,
        progress=False,
    )
    assert [os.path.basename(r["image"]) for r in rows] == ["0.png", "1.png", "2.png"]
    assert {r["prompt"] for r in rows} == {"what color is the shape?"}
    for row in rows:
        assert list(row["scores"]) == candidates
        assert row["output"] == max(row["scores"], key=row["scores"].get)
    predictor = Predictor(
        *ib_jax.load_pretrained(checkpoint),
        qformer_vocab=tokenizer_files(checkpoint)[0],
        lm_spm=tokenizer_files(checkpoint)[1],
        batch_size=4,
    )
    ranked = predictor(
        [r["image"] for r in rows], "what color is the shape?", candidates=candidates
    )
    for mine, theirs in zip(ranked, rows):
        assert mine["output"] == theirs["output"]
        np.testing.assert_allclose(
            list(mine["scores"].values()), list(theirs["scores"].values()), rtol=1e-5, atol=1e-5
        )


def test_the_readme_example_runs(checkpoint, scenes):
    text = open(README).read()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    (example,) = [b for b in blocks if "ib_jax.predict(" in b]
    example = example.replace("ckpt/instructblip-flan-t5-xl", checkpoint)
    example = example.replace("photo.jpg", str(scenes / "0.png"))
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)
    (answer,) = namespace["answers"]
    assert isinstance(answer, str)


def test_a_hugging_face_directory_predicts_as_its_converted_source(checkpoint, scenes, tmp_path):
    hf = str(tmp_path / "hf")
    export.export(checkpoint, hf, image_token=287)  # the tiny vocabulary has no spare row
    shutil.copytree(
        os.path.join(checkpoint, "qformer_tokenizer"), os.path.join(hf, "qformer_tokenizer")
    )
    shutil.copy(os.path.join(checkpoint, "spiece.model"), hf)
    rows = str(scenes / "rows.jsonl")
    ours = job.run(checkpoint, rows, str(tmp_path / "a.jsonl"), decoding=GREEDY, progress=False)
    theirs = job.run(hf, rows, str(tmp_path / "b.jsonl"), decoding=GREEDY, progress=False)
    assert [r["output"] for r in theirs] == [r["output"] for r in ours]
    # configs/finetune.py reads the architecture and tokenizers from the HF directory alike.
    config = finetune.get_config(f"train={rows},init={hf}")
    converted = finetune.get_config(f"train={rows},init={checkpoint}")
    for section in ("vision", "qformer", "num_query_tokens", "lm_type"):
        assert config.model[section] == converted.model[section], section
    assert config.data.lm_spm == os.path.join(hf, "spiece.model")
