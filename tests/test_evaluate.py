"""The evaluation job end to end on the demo data with a tiny random model (one-shot and watch)."""

import json
import os

import jax
import ml_collections
import numpy as np
import pytest

from configs import common, data_demo, evals
from data_pipelines import eval_pipeline, sources
from ib_jax import configs_util
from ib_jax.contract.config import ConfigFieldError, RunConfig
from ib_jax.eval import job as evaluate

DATASETS = ["demo_vqa", "demo_caption", "demo_mc"]


def _config(root: str) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.model = common.model(
        vision=dict(
            hidden_size=16,
            intermediate_size=32,
            num_layers=1,
            num_heads=2,
            image_size=32,
            patch_size=16,
        ),
        qformer=dict(
            vocab_size=288,
            hidden_size=16,
            intermediate_size=32,
            num_layers=1,
            num_heads=2,
            max_position_embeddings=64,
            cross_attention_frequency=1,
            encoder_hidden_size=16,
        ),
        text=dict(
            common.FLAN_T5,
            vocab_size=288,
            d_model=16,
            d_kv=8,
            d_ff=32,
            num_layers=1,
            num_decoder_layers=1,
            num_heads=2,
        ),
        num_query_tokens=2,
        dtype="float32",
        scan_layers=False,
        remat_policy="none",
    )
    config.data = data_demo.get_config(f"root={root},num_train=8,num_eval=3")
    config.data.update(
        dict(
            image_size=32,
            qformer_max_len=24,
            text_max_len=24,
            target_max_len=8,
            global_batch_size=4,
            prefetch_batches=0,
        )
    )
    config.train = ml_collections.ConfigDict(dict(num_steps=20))
    # Short decoding keeps the test fast; the declared settings are checked in test_heldout_*.
    short = dict(num_beams=2, max_new_tokens=4, min_new_tokens=1)
    config.eval = common.eval_job(batch_size=4)
    config.evals = evals.declare(DATASETS)
    config.evals.demo_vqa.update(short)
    config.evals.demo_caption.update(short)
    config.evals.demo_mc.candidate_max_len = 6
    return config


def _params(config, seed: int):
    from ib_jax.contract.model import from_config_dict
    from ib_jax.models.instructblip import InstructBlip, init_params

    model = InstructBlip(from_config_dict(config.model))
    batch = {
        "pixel_values": np.zeros((1, 32, 32, 3), np.float32),
        "qformer_input_ids": np.ones((1, 4), np.int32),
        "qformer_attention_mask": np.ones((1, 4), np.int32),
        "input_ids": np.ones((1, 4), np.int32),
        "attention_mask": np.ones((1, 4), np.int32),
        "labels": np.ones((1, 2), np.int32),
    }
    import flax

    # Shapes from eval_shape, values drawn with numpy: compiling the init of even a tiny model
    # costs ~20 s here, and the job only needs some random model.
    shapes = flax.linen.meta.unbox(
        jax.eval_shape(lambda rng: init_params(model, rng, batch), jax.random.key(0))
    )
    rng = np.random.default_rng(seed)
    return model, jax.tree_util.tree_map(
        lambda s: (0.3 * rng.standard_normal(s.shape)).astype(s.dtype), shapes
    )


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    return _config(str(tmp_path_factory.mktemp("demo_data")))


def test_declared_evaluations_take_overrides_and_refuse_unknown_fields():
    config = configs_util.load_config("configs/eval_heldout.py:root=/data")
    config.evals.gqa.prompt = "Question: {question} Answer:"
    config.evals.nocaps.num_beams = 3
    declared = {e.name: e for e in RunConfig.from_config(config).evals}
    assert declared["gqa"].prompt == "Question: {question} Answer:"
    assert declared["nocaps"].num_beams == 3 and declared["flickr30k"].num_beams == 5
    config.evals.nocaps.beams = 3  # a misspelt field
    with pytest.raises(ConfigFieldError, match=r"evals\.nocaps\.beams .*did you mean 'num_beams'"):
        RunConfig.from_config(config)


def test_heldout_config_declares_the_13_evaluations_without_a_model():
    config = configs_util.load_config("configs/eval_heldout.py:root=/data")
    assert "model" not in config  # the evaluated model is the checkpoint's
    assert "model" in configs_util.load_config("configs/eval_heldout.py:root=/data,model=1")
    settings = {e.name: e for e in RunConfig.from_config(config).evals}
    assert len(settings) == 13
    names = [e["name"] for e in config.data.eval_datasets]
    assert sorted(names) == sorted(e.dataset for e in settings.values()) and all(
        e["ann_path"].startswith("/data/") for e in config.data.eval_datasets
    )
    assert (
        settings["gqa"].num_beams,
        settings["gqa"].max_new_tokens,
        settings["gqa"].length_penalty,
    ) == (5, 10, -1.0)
    assert (settings["nocaps"].max_new_tokens, settings["nocaps"].min_new_tokens) == (80, 9)
    assert (
        settings["hateful_memes"].candidates == ("yes", "no")
        and settings["visdial"].metric == "mrr"
        and settings["vsr"].mode == "rank"
    )
    assert config.data.num_frames == 4


def test_one_shot_on_a_converted_directory(config, tmp_path):
    from ib_jax.contract.model import from_config_dict
    from ib_jax.convert import api

    _, params = _params(config, seed=0)
    converted = str(tmp_path / "converted")
    api.save_converted(converted, from_config_dict(config.model), params)
    workdir = str(tmp_path / "run")
    results = evaluate.run(config, workdir, converted)

    assert set(results) == set(DATASETS)
    sizes = [
        len(sources.load_records(eval_pipeline.find_eval_entry(config.data, n, "eval")))
        for n in DATASETS
    ]
    assert any(size % 4 for size in sizes)  # some last batch is padded: padding rows must not count
    for name, metric in [
        ("demo_vqa", "vqa_accuracy"),
        ("demo_caption", "cider"),
        ("demo_mc", "accuracy"),
    ]:
        m = results[name]
        # Every example is counted once; the padding rows of the last batch (batch size 4) are not.
        expected = len(
            sources.load_records(eval_pipeline.find_eval_entry(config.data, name, "eval"))
        )
        assert m["num_examples"] == expected and m["num_scored"] == expected
        assert m["missing_images"] == 0
        assert 0.0 <= m[metric] <= (10.0 if metric == "cider" else 1.0)
        with open(os.path.join(workdir, "eval", "predictions", name, "converted.jsonl")) as f:
            rows = [json.loads(line) for line in f]
        assert len(rows) == expected and len({r["id"] for r in rows}) == expected
        # Beside the predictions, the page of samples shows each with its picture.
        page = open(os.path.join(workdir, "eval", "predictions", name, "converted.html")).read()
        assert page.count("<img") >= min(expected, 1) and metric in page
    mc = [
        json.loads(line)
        for line in open(os.path.join(workdir, "eval", "predictions", "demo_mc", "converted.jsonl"))
    ]
    # The rank prediction is the argmax of the candidate scores, scored against answer_index.
    for row in mc:
        assert row["prediction"] == int(np.argmax(row["scores"]))
        assert row["score"] == float(row["prediction"] == row["reference"])
    lines = [json.loads(line) for line in open(os.path.join(workdir, "eval", "metrics.jsonl"))]
    assert sorted(line["dataset"] for line in lines) == sorted(DATASETS)
    assert any(
        name.startswith("events")
        for name in os.listdir(os.path.join(workdir, "eval", "tensorboard"))
    )


def _save_training_checkpoint(workdir, step, params, config):
    import orbax.checkpoint as ocp

    from ib_jax import checkpoint

    manager = checkpoint.make_manager(workdir, async_save=False)
    manager.save(
        step,
        args=ocp.args.Composite(
            params=ocp.args.StandardSave(params), config=ocp.args.JsonSave(config.to_dict())
        ),
    )
    manager.wait_until_finished()
    manager.close()


def test_watch_evaluates_each_checkpoint_once_and_resumes(config, tmp_path):
    config = ml_collections.ConfigDict(config.to_dict())
    del config.evals["demo_vqa"], config.evals["demo_caption"]
    workdir = str(tmp_path / "run")
    _, params_a = _params(config, seed=1)
    _, params_b = _params(config, seed=2)
    _save_training_checkpoint(workdir, 10, params_a, config)
    _save_training_checkpoint(
        workdir, 20, params_b, config
    )  # 20 == train.num_steps: training is over

    assert evaluate.run(config, workdir, watch_mode=True, poll_seconds=0.01, timeout_seconds=5) == [
        10,
        20,
    ]
    lines = [json.loads(line) for line in open(os.path.join(workdir, "eval", "metrics.jsonl"))]
    assert [(line["step"], line["dataset"]) for line in lines] == [(10, "demo_mc"), (20, "demo_mc")]
    # Different parameters, different candidate scores: each step was really restored.
    preds = {
        s: [
            json.loads(x)["scores"]
            for x in open(
                os.path.join(workdir, "eval", "predictions", "demo_mc", f"step_{s}.jsonl")
            )
        ]
        for s in (10, 20)
    }
    assert preds[10] != preds[20]

    # A restarted job finds both steps in done.json and evaluates nothing.
    assert (
        evaluate.run(config, workdir, watch_mode=True, poll_seconds=0.01, timeout_seconds=1) == []
    )
    assert json.load(open(os.path.join(workdir, "eval", "done.json")))["steps"] == [10, 20]
    assert len(open(os.path.join(workdir, "eval", "metrics.jsonl")).readlines()) == 2


@pytest.mark.slow
def test_heldout_config_evaluates_a_converted_checkpoint_of_another_size(config, tmp_path):
    """`python -m ib_jax.evaluate --config=configs/eval_heldout.py:root=...` on a converted
    checkpoint of a non-released size: no model override (the checkpoint's model is evaluated, its
    image size and position tables followed), an evaluation field overridden from the command
    line, the miniature's published layouts and tokenizers."""
    import subprocess
    import sys

    from data_pipelines.miniature import write_miniature
    from ib_jax.contract.model import from_config_dict
    from ib_jax.convert import api

    root = str(tmp_path / "mini")
    write_miniature(root, seed=0)
    _, params = _params(config, seed=0)
    converted = str(tmp_path / "tiny_converted")
    api.save_converted(converted, from_config_dict(config.model), params)
    workdir = str(tmp_path / "run")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ib_jax.evaluate",
            f"--config=configs/eval_heldout.py:root={root},datasets=gqa+scienceqa",
            f"--workdir={workdir}",
            f"--checkpoint={converted}",
            "--config.evals.gqa.prompt=Q: {question} A:",
            "--config.evals.gqa.num_beams=1",
            "--config.evals.gqa.max_new_tokens=3",
            "--config.eval.batch_size=4",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = [json.loads(line) for line in open(os.path.join(workdir, "eval", "metrics.jsonl"))]
    metrics = {line["dataset"]: line for line in lines}
    assert set(metrics) == {"gqa", "scienceqa"}
    assert 0.0 <= metrics["gqa"]["exact_match"] <= 1.0
    assert 0.0 <= metrics["scienceqa"]["accuracy"] <= 1.0
    predictions = os.path.join(workdir, "eval", "predictions", "gqa", "tiny_converted.jsonl")
    rows = [json.loads(line) for line in open(predictions)]
    assert rows and all(r["instruction"].startswith("Q: ") for r in rows)
    # The config's 128-token Q-Former instruction was cut to the tiny model's 64 positions.
    log = open(os.path.join(workdir, "logs", "evaluate.log")).read()
    assert "cut to 64: model.qformer position table" in log


def test_a_checkpoint_of_another_lm_family_than_the_config_is_refused(config, tmp_path):
    """The config's tokenizer, text layout and declared decoding are one LM family's: a
    checkpoint holding another family is refused, naming both (never decoded as the wrong one)."""
    from ib_jax.contract.model import from_config_dict
    from ib_jax.convert import api
    from ib_jax.eval.loading import ModelMismatchError

    _, params = _params(config, seed=0)
    converted = str(tmp_path / "t5_model")
    api.save_converted(converted, from_config_dict(config.model), params)
    vicuna_config = ml_collections.ConfigDict(config.to_dict())
    del vicuna_config.model  # the checkpoint's model is evaluated
    vicuna_config.data.lm_type = "llama"
    with pytest.raises(ModelMismatchError, match=r"'llama' language models .* holds a 't5' LM"):
        evaluate.run(vicuna_config, str(tmp_path / "run"), converted)
