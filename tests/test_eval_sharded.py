"""The eval job on a sharded mesh (8 CPU devices) against one device, parameter restoring into
shardings, the checkpoint's model, and non-finite outputs counted instead of scored."""

import dataclasses
import json
import os

import flax
import jax
import ml_collections
import numpy as np
import pytest

from configs import demo_vicuna, evals
from data_pipelines import demo_data, eval_pipeline, sources, text
from ib_jax.configs_util import load_config
from ib_jax.contract.config import evaluations
from ib_jax.contract.model import from_config_dict
from ib_jax.contract.text import text_format
from ib_jax.eval import evaluators, loading, runner
from ib_jax.eval import job as evaluate
from ib_jax.eval import program as program_lib
from ib_jax.models.instructblip import InstructBlip, init_params

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARDED = dict(data=1, fsdp=4, tensor=2)
DATASETS = ["demo_vqa", "demo_caption", "demo_mc"]


def tiny_config(root: str, lm: str = "t5") -> ml_collections.ConfigDict:
    """configs/tiny.py with beam (demo_vqa), greedy (demo_caption) and ranking (demo_mc)."""
    config = load_config(os.path.join(REPO, f"configs/tiny.py:root={root}"))
    config.unlock()
    if lm == "llama":
        llama = dict(demo_vicuna.tiny_llama(demo_data.DEMO_SPM), hidden_size=32, num_layers=2)
        llama.update(intermediate_size=64, num_heads=4, num_kv_heads=2)
        config.model.lm_type, config.model.text = "llama", llama
        config.data.lm_type = "llama"
    config.evals = evals.declare(DATASETS)
    config.evals.demo_vqa.update(num_beams=2, max_new_tokens=4, min_new_tokens=1)
    config.evals.demo_caption.update(num_beams=1, max_new_tokens=5, min_new_tokens=2)
    config.evals.demo_mc.candidate_max_len = 6
    return config


def random_params(config: ml_collections.ConfigDict, seed: int = 0) -> dict:
    """Numpy parameters of config.model (values drawn with numpy: no compiled init)."""
    model = InstructBlip(from_config_dict(config.model))
    size = config.model.vision.image_size
    batch = {"pixel_values": np.zeros((1, size, size, 3), np.float32)}
    batch.update({k: np.ones((1, 4), np.int32) for k in ("input_ids", "attention_mask")})
    batch.update({k: np.ones((1, 4), np.int32) for k in ("qformer_input_ids", "labels")})
    batch["qformer_attention_mask"] = np.ones((1, 4), np.int32)
    shapes = flax.linen.meta.unbox(
        jax.eval_shape(lambda rng: init_params(model, rng, batch), jax.random.key(0))
    )
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(
        lambda s: (0.3 * rng.standard_normal(s.shape)).astype(s.dtype), shapes
    )


def save_converted(config: ml_collections.ConfigDict, directory: str, seed: int = 0) -> str:
    """A directory as `ib_jax.convert` writes it, holding random parameters of config.model."""
    from ib_jax.convert import api

    api.save_converted(directory, from_config_dict(config.model), random_params(config, seed))
    return directory


def with_mesh(config: ml_collections.ConfigDict, shape: dict | None) -> ml_collections.ConfigDict:
    """A copy evaluating on `shape` (config.eval.mesh), or on one device (no mesh at all)."""
    config = ml_collections.ConfigDict(config.to_dict())
    if shape is None:
        del config["mesh"]
    else:
        config.eval.mesh = dict(shape=shape)
    return config


def predictions(workdir: str, dataset: str, tag: str) -> list[dict]:
    with open(os.path.join(workdir, "eval", "predictions", dataset, f"{tag}.jsonl")) as f:
        return [json.loads(line) for line in f]


def assert_same_results(workdir_a, workdir_b, results_a, results_b, tag):
    """Same predictions (text exactly, candidate scores to 1e-5) and metrics in both workdirs."""
    assert set(results_a) == set(results_b) == set(DATASETS)
    distinct = {
        json.dumps(r["prediction"]) for d in DATASETS for r in predictions(workdir_a, d, tag)
    }
    assert len(distinct) > 3  # not one degenerate output everywhere
    for dataset in DATASETS:
        a, b = predictions(workdir_a, dataset, tag), predictions(workdir_b, dataset, tag)
        assert [r["id"] for r in a] == [r["id"] for r in b]
        assert [r["prediction"] for r in a] == [r["prediction"] for r in b], dataset
        if "scores" in a[0]:
            np.testing.assert_allclose(
                [r["scores"] for r in a], [r["scores"] for r in b], rtol=1e-5, atol=1e-5
            )
        ma, mb = results_a[dataset], results_b[dataset]
        assert set(ma) == set(mb) and "error" not in ma, (ma, mb)
        for key in ma:
            np.testing.assert_allclose(ma[key], mb[key], rtol=1e-6, err_msg=f"{dataset} {key}")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("demo_data"))
    demo_data.ensure_from_config(tiny_config(root).data)
    return root


@pytest.mark.parametrize("lm", ["t5", "llama"])
def test_sharded_eval_equals_one_device(data_root, tmp_path, lm):
    config = tiny_config(data_root, lm)
    converted = save_converted(config, str(tmp_path / "converted"))
    one = evaluate.run(with_mesh(config, None), str(tmp_path / "one"), converted)
    sharded = evaluate.run(with_mesh(config, SHARDED), str(tmp_path / "sharded"), converted)
    for dataset in DATASETS:
        entry = eval_pipeline.find_eval_entry(config.data, dataset, "eval")
        size = len(sources.load_records(entry))
        assert one[dataset]["num_scored"] == one[dataset]["num_examples"] == size
    assert_same_results(str(tmp_path / "one"), str(tmp_path / "sharded"), one, sharded, "converted")


def _save_training_checkpoint(workdir: str, step: int, params, config) -> None:
    import orbax.checkpoint as ocp

    from ib_jax import checkpoint

    manager = checkpoint.make_manager(workdir, async_save=False)
    args = dict(params=ocp.args.StandardSave(params), config=ocp.args.JsonSave(config.to_dict()))
    manager.save(step, args=ocp.args.Composite(**args))
    manager.wait_until_finished()
    manager.close()


def test_training_checkpoint_restores_into_shardings_in_eval_dtype(data_root, tmp_path):
    config = with_mesh(tiny_config(data_root), SHARDED)
    params = random_params(config)
    _save_training_checkpoint(str(tmp_path), 7, params, config)
    config.eval.param_dtype = "bfloat16"
    loaded = loading.load(config, str(tmp_path), None)  # the latest step
    assert (loaded.tag, loaded.step) == ("step_7", 7)
    program = loaded.program
    assert dict(program.mesh.shape) == SHARDED
    expected = program_lib.abstract_params(program.model, program.mesh, program.rules)
    flat = flax.traverse_util.flatten_dict(program.params, sep="/")
    for name, leaf in flax.traverse_util.flatten_dict(expected, sep="/").items():
        got = flat[name]
        assert got.dtype == jax.numpy.bfloat16 and got.sharding == leaf.sharding, name
    # The LM's wide matrices are split over fsdp x tensor: each device holds an eighth.
    wo = flat["language_model/encoder/layers_0/mlp/wo/kernel"]
    assert wo.addressable_shards[0].data.size * 8 == wo.size
    source = flax.traverse_util.flatten_dict(params, sep="/")
    for name in ("language_model/encoder/layers_0/mlp/wo/kernel", "qformer/query_tokens"):
        np.testing.assert_array_equal(
            np.asarray(flat[name], np.float32),
            source[name].astype(jax.numpy.bfloat16).astype(np.float32),
        )
    assert program.model.config.dtype == "float32"  # compute dtype: float32 unless configured


def test_the_checkpoint_model_is_used_and_a_disagreeing_config_refused(data_root, tmp_path):
    config = tiny_config(data_root)
    _save_training_checkpoint(str(tmp_path), 3, random_params(config), config)
    other = ml_collections.ConfigDict(config.to_dict())
    other.model.text.d_ff = 128
    with pytest.raises(
        loading.ModelMismatchError, match=r"model\.text\.d_ff=128 in the config, 64"
    ):
        loading.load(other, str(tmp_path), 3)
    # Without a model section, the saved one is evaluated.
    del other["model"]
    loaded = loading.load(other, str(tmp_path), 3)
    assert loaded.program.model.config.text.d_ff == 64


@pytest.mark.reference
def test_hf_directory_is_streamed_into_shardings(tmp_path):
    import ib_jax
    from tests import reference

    directory = str(tmp_path / "hf")
    reference.build("t5", seed=0).save_pretrained(directory)
    config = ml_collections.ConfigDict(dict(eval=dict(mesh=dict(shape=SHARDED))))
    config.mesh = tiny_config(str(tmp_path)).mesh
    loaded = loading.load(config, str(tmp_path), directory)
    _, expected = ib_jax.load_pretrained(directory)
    got = flax.traverse_util.flatten_dict(loaded.program.params, sep="/")
    want = flax.traverse_util.flatten_dict(expected, sep="/")
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_array_equal(np.asarray(got[name]), np.asarray(want[name]), err_msg=name)
    assert got["language_model/shared/embedding"].sharding.spec == jax.sharding.PartitionSpec(
        "tensor", "fsdp"
    )


def _batches_with_a_nan_image(config, dataset: str, bad_row: int) -> list[dict]:
    data_config = ml_collections.ConfigDict(config.data.to_dict())
    batches = list(eval_pipeline.build_eval_dataset(data_config, dataset, "eval"))
    batches[0]["pixel_values"][bad_row] = np.nan
    return batches


@pytest.mark.parametrize("dataset", ["demo_vqa", "demo_mc"])
def test_nonfinite_outputs_are_counted_not_scored(data_root, dataset):
    config = with_mesh(tiny_config(data_root), SHARDED)
    mesh, rules = program_lib.eval_mesh(config)
    model = InstructBlip(from_config_dict(config.model))
    params = program_lib.place(
        random_params(config), program_lib.abstract_params(model, mesh, rules)
    )
    program = program_lib.InferenceProgram(model, params, mesh, rules)
    tokenizer = text.LMTokenizer(config.data.lm_spm, text_format("t5"))
    declared = {e.name: e for e in evaluations(config)}
    evaluator = evaluators.make_evaluator(declared[dataset], tokenizer)

    size = len(sources.load_records(eval_pipeline.find_eval_entry(config.data, dataset, "eval")))
    result = evaluator.run(program, _batches_with_a_nan_image(config, dataset, 3), None, 0.5)
    m = result.metrics
    assert (m["num_examples"], m["num_nonfinite"], m["num_scored"]) == (size, 1, size - 1)
    bad = result.predictions[3]
    assert bad["nonfinite"] and bad["prediction"] is None and "score" not in bad
    assert "scores" not in bad and all(np.isfinite(r["score"]) for r in result.predictions[4:])
    metric = evaluator.settings.metric
    scored = [r["score"] for r in result.predictions if "score" in r]
    assert len(scored) == size - 1 and m[metric] == pytest.approx(np.mean(scored))
    with pytest.raises(runner.NonFiniteOutputError, match=rf"1 of {size} examples gave NaN"):
        evaluator.run(program, _batches_with_a_nan_image(config, dataset, 3), None, 0.01)


def test_a_model_that_outputs_nan_fails_every_dataset_without_a_metric(data_root, tmp_path):
    from ib_jax.convert import api

    config = with_mesh(tiny_config(data_root), None)
    del config.evals["demo_vqa"]
    params = random_params(config)
    params["language_projection"]["kernel"][0, 0] = np.nan
    converted = str(tmp_path / "nan_model")
    api.save_converted(converted, from_config_dict(config.model), params)
    outputs = evaluate.Outputs(str(tmp_path))
    results = evaluate.run(config, str(tmp_path), converted, outputs=outputs)
    assert [dataset for _, dataset, _ in outputs.failed] == ["demo_caption", "demo_mc"]
    for dataset in ("demo_mc", "demo_caption"):
        size = len(
            sources.load_records(eval_pipeline.find_eval_entry(config.data, dataset, "eval"))
        )
        assert f"{size} of {size} examples gave NaN" in results[dataset]["error"]
    lines = [json.loads(x) for x in open(tmp_path / "eval" / "metrics.jsonl")]
    assert all(line["failed"] and "cider" not in line and "accuracy" not in line for line in lines)


def test_ranking_whole_candidates_sizes_labels_per_batch(data_root):
    """candidate_max_len=0 (LAVIS ranks candidates uncut): the labels are as long as the batch's
    longest candidate, rounded up to a power of two, and the scores equal those of a fixed width
    that cuts nothing."""
    config = with_mesh(tiny_config(data_root), None)
    mesh, rules = program_lib.eval_mesh(config)
    model = InstructBlip(from_config_dict(config.model))
    params = program_lib.place(
        random_params(config), program_lib.abstract_params(model, mesh, rules)
    )
    program = program_lib.InferenceProgram(model, params, mesh, rules)
    tokenizer = text.LMTokenizer(config.data.lm_spm, text_format("t5"))
    (declared,) = [e for e in evaluations(config) if e.name == "demo_mc"]
    whole = evaluators.make_evaluator(dataclasses.replace(declared, candidate_max_len=0), tokenizer)
    fixed = evaluators.make_evaluator(
        dataclasses.replace(declared, candidate_max_len=64), tokenizer
    )

    long_option = "a red circle to the left of a blue square above a green triangle " * 2
    batch = {"meta": {"choices": [["yes", long_option, "no"], ["red", "blue"]]}}
    tokens = int((tokenizer.encode_candidate(long_option, 4096) != -100).sum())
    assert tokens > 16  # longer than the old fixed cut
    assert whole.batch_width(batch, [0, 1]) == (4, 1 << (tokens - 1).bit_length())
    assert fixed.batch_width(batch, [0, 1]) == (4, 64)

    batches = list(eval_pipeline.build_eval_dataset(config.data, "demo_mc", "eval"))
    got = whole.run(program, iter(batches), None, 0.5)
    want = fixed.run(program, iter(batches), None, 0.5)
    # Another label width compiles another program: equal up to float rounding.
    for ours, theirs in zip(got.predictions, want.predictions):
        np.testing.assert_allclose(ours["scores"], theirs["scores"], rtol=1e-5)
        assert ours["prediction"] == theirs["prediction"]
