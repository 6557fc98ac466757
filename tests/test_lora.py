"""LoRA (ib_jax/models/lora.py) without the reference: parameters and axes, step 0, the trainable
set, bf16_mixed storage, merging, the sharded step, the command line. Against peft itself:
tests/test_lora_peft.py."""

import logging
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import ib_jax
from data_pipelines import demo_data, train_pipeline
from ib_jax import sharding
from ib_jax.configs_util import load_config, model_config
from ib_jax.contract.model import LoraConfig, from_config_dict
from ib_jax.models import lora
from ib_jax.models.instructblip import InstructBlip, init_params
from ib_jax.train import state as state_lib
from ib_jax.train import trainer
from tests import test_train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The LM's attention (T5 q, v) and MLP output, the Q-Former's attention (self and cross), the ViT's qkv.
TARGETS = r"self_attention/(q|v)$,mlp/wo$,attention/(query|value)$,self_attn/qkv$"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("demo_data"))


def _config(data_root, scan=False, **lora_fields):
    config = load_config(os.path.join(REPO, f"configs/tiny.py:root={data_root}"))
    config.unlock()
    config.model.scan_layers = scan
    config.model.lora.update(dict(dict(rank=4, alpha=8.0, targets=TARGETS), **lora_fields))
    return config


def _batch(config):
    shapes = trainer.example_batch(config)
    rng = np.random.default_rng(0)
    batch = {k: jnp.asarray(rng.integers(1, 200, v.shape), v.dtype) for k, v in shapes.items()}
    batch["pixel_values"] = jnp.asarray(rng.normal(size=shapes["pixel_values"].shape), jnp.float32)
    return batch


def _apply(model, params, batch, **kw):
    """The teacher-forced forward, jitted (eager op-by-op dispatch is what makes tests slow)."""
    return jax.jit(lambda p, b: model.apply({"params": p}, **b, **kw))(params, batch)


def _init(model, batch, abstract=False):
    """Boxed parameters, jitted (or only their shapes)."""
    init = lambda r: init_params(model, r, batch)  # noqa: E731
    return jax.eval_shape(init, jax.random.key(0)) if abstract else jax.jit(init)(jax.random.key(0))


def _flat(tree):
    return traverse_util.flatten_dict(tree, sep="/")


def _random_b(params, seed=1):
    flat = _flat(params)
    keys = jax.random.split(jax.random.key(seed), len(flat))
    for key, path in zip(keys, sorted(flat)):
        if path.endswith("lora_b"):
            flat[path] = 0.3 * jax.random.normal(key, flat[path].shape)
    return traverse_util.unflatten_dict(flat, sep="/")


def _without_lora(params):
    base = {p: v for p, v in _flat(params).items() if not lora.is_lora_path(p)}
    return traverse_util.unflatten_dict(base, sep="/")


@pytest.mark.parametrize("scan", [False, True], ids=["unscanned", "scanned"])
def test_step_0_is_the_base_model_and_merging_keeps_the_logits(data_root, scan):
    """One model per layout (dropout configured: it acts only with a dropout key)."""
    config = _config(
        data_root, scan, dropout=0.5, rank_pattern={"qkv": 2}, alpha_pattern={"value": 3.0}
    )
    model = InstructBlip(model_config(config))
    plain = InstructBlip(lora.without(model.config))
    batch = _batch(config)
    boxed = _init(model, batch)
    flat = _flat(boxed)
    stack = ("layers",) if scan else ()
    layer = "layers" if scan else "layers_0"
    q = f"language_model/encoder/{layer}/self_attention/q"
    assert flat[f"{q}/kernel"].names == (*stack, "embed", "heads", "kv")
    assert flat[f"{q}/lora_a"].names == (*stack, "embed", None)
    assert flat[f"{q}/lora_b"].names == (*stack, None, "heads", "kv")
    assert flat[f"{q}/lora_a"].value.shape[-1] == 4
    assert flat[f"vision/{layer}/self_attn/qkv/lora_a"].value.shape[-1] == 2  # rank_pattern
    assert not np.any(np.asarray(flat[f"{q}/lora_b"].value)), "B starts at zero"
    # peft's A: U(-1/sqrt(in), 1/sqrt(in)) over the kernel's inputs (d_model 32).
    assert 0 < float(np.abs(np.asarray(flat[f"{q}/lora_a"].value)).max()) <= 32**-0.5
    targeted = {p.split("/")[0] for p in flat if p.endswith("lora_a")}
    assert targeted == {"language_model", "qformer", "vision"}
    assert not any(p.endswith("lora_a") for p in flat if "/k/" in p or "cross_attention" in p)

    params = nn.unbox(boxed)
    got = _apply(model, params, batch).logits
    want = _apply(plain, _without_lora(params), batch).logits
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))

    params = _random_b(params)
    unmerged = _apply(model, params, batch).logits
    assert float(jnp.abs(unmerged - want).max()) > 1e-2, "the adapter changes nothing"
    merged_params = lora.merge(jax.device_get(params), model.config.lora)
    assert not any(lora.is_lora_path(p) for p in _flat(merged_params))
    merged = _apply(plain, merged_params, batch).logits
    np.testing.assert_allclose(np.asarray(merged), np.asarray(unmerged), atol=1e-5)
    if not scan:  # LoRA dropout draws masks only when given a dropout key (training)
        dropped = _apply(model, params, batch, rngs={"dropout": jax.random.key(1)}).logits
        assert float(jnp.abs(dropped - unmerged).max()) > 1e-3


def test_trainable_set_is_lora_plus_the_regexes(data_root):
    config = _config(data_root)
    model = InstructBlip(model_config(config))
    params = nn.unbox(_init(model, _batch(config), abstract=True))
    # A comma-separated string, as --config.train.trainable=... gives it.
    trainable, frozen = state_lib.split_params(params, "^language_projection/, ^vision/post_")
    names = set(_flat(trainable))
    assert {p for p in _flat(params) if lora.is_lora_path(p)} <= names
    assert "language_projection/kernel" in names and "vision/post_layernorm/scale" in names
    assert not any(lora.is_lora_path(p) for p in _flat(frozen))
    assert "qformer/query_tokens" in _flat(frozen)
    only_lora, _ = state_lib.split_params(params, "")  # LoRA alone
    assert all(lora.is_lora_path(p) for p in _flat(only_lora))
    with pytest.raises(ValueError, match=r"\['\^qformr/'\] match no parameter.*language_model/"):
        state_lib.split_params(params, ["^qformer/", "^qformr/"])
    plain = nn.unbox(_init(InstructBlip(lora.without(model.config)), _batch(config), abstract=True))
    with pytest.raises(ValueError, match="trains nothing"):
        state_lib.split_params(plain, "")


def test_targets_that_match_no_dense_are_refused(data_root):
    config = _config(data_root, targets=r"self_attention/q$,mlp/nothing$")
    with pytest.raises(
        ValueError, match=r"\['mlp/nothing\$'\] match no Dense.*paths look like \['"
    ):
        _init(InstructBlip(model_config(config)), _batch(config), abstract=True)
    with pytest.raises(ValueError, match="needs config.model.lora.targets"):
        from_config_dict(dict(lora=dict(rank=4)))


def test_bf16_mixed_keeps_fp32_lora_masters_beside_a_bf16_base(data_root):
    config = _config(data_root)
    config.model.precision, config.model.dtype, config.model.param_dtype = "bf16_mixed", "", ""
    config.train.frozen_dtype = ""
    config.train.trainable = ""
    mesh, rules = sharding.make_mesh(config.mesh), sharding.axis_rules(config.mesh)
    with sharding.activate(mesh, rules):
        program = trainer.build_program(config, mesh, rules)
    trainable = _flat(program.abstract_state.trainable)
    frozen = _flat(program.abstract_frozen)
    assert trainable and all(lora.is_lora_path(p) for p in trainable)
    assert {x.dtype for x in trainable.values()} == {jnp.dtype("float32")}
    assert frozen["language_model/encoder/layers_0/self_attention/q/kernel"].dtype == jnp.bfloat16
    line = state_lib.describe_split(program.abstract_state, program.abstract_frozen)
    count = sum(x.size for x in trainable.values())
    assert f"parameters: {count:,d} trainable" in line and f"{count:,d} of them LoRA" in line
    # Adam's two moments in fp32 (plus its step count): the optimizer state is ~2x the trainable.
    assert "optimizer state" in line


def test_pretrained_parameters_get_fresh_lora_pairs(data_root):
    config = _config(data_root)
    model = InstructBlip(model_config(config))
    init = trainer._init_fn(model, trainer.example_batch(config))
    full = _flat(nn.unbox(init(jax.random.key(0))))
    pretrained = traverse_util.unflatten_dict(
        {p: np.asarray(v) for p, v in full.items() if not lora.is_lora_path(p)}, sep="/"
    )
    completed = _flat(state_lib.complete_lora(pretrained, init, jax.random.key(0)))
    assert set(completed) == set(full)
    for path, value in full.items():
        np.testing.assert_array_equal(np.asarray(completed[path]), np.asarray(value), path)
    wrong = dict(completed)
    path = "language_model/encoder/layers_0/self_attention/q/lora_a"
    wrong[path] = np.zeros((32, 8), np.float32)
    with pytest.raises(ValueError, match=r"lora_a \(32, 8\) \(the model's: \(32, 4\)\)"):
        state_lib.complete_lora(
            traverse_util.unflatten_dict(wrong, sep="/"), init, jax.random.key(0)
        )


@pytest.mark.slow
def test_sharded_lora_step_equals_single_device(data_root):
    """8 devices (data 2 x fsdp 2 x tensor 2) against 1, LoRA on the LM, Q-Former and ViT."""
    config = _config(data_root)
    demo_data.ensure_from_config(config.data)
    batch = next(
        iter(train_pipeline.build_train_dataset(config.data, process_index=0, process_count=1))
    )
    sharded = _config(data_root)
    sharded.mesh.shape.update(data=2, fsdp=2, tensor=2)
    loss_8, params_8, specs = test_train._one_step(sharded, batch)
    single = _config(data_root)
    single.mesh.shape.update(data=1, fsdp=1, tensor=1)
    loss_1, params_1, _ = test_train._one_step(single, batch, jax.devices()[:1])
    flat_8 = _flat(params_8)
    lora_b = [p for p in flat_8 if p.endswith("lora_b")]
    assert lora_b and all(np.any(flat_8[p]) for p in lora_b), "B moved off zero"
    np.testing.assert_allclose(loss_8, loss_1, rtol=1e-6)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5), params_8, params_1
    )
    del specs


@pytest.mark.slow
def test_a_run_with_string_fields_logs_its_counts(data_root, tmp_path, caplog):
    """`config.train.trainable` and `config.model.lora.targets` as the comma-separated strings a
    command line gives; the start line counts LoRA plus the projection."""
    config = _config(data_root)
    config.train.trainable = "^language_projection/"
    config.train.num_steps = 2
    config.checkpoint.every_steps = 2
    config.eval.after_training = False
    demo_data.ensure_from_config(config.data)
    with caplog.at_level(logging.INFO, logger="ib_jax.train.trainer"):
        metrics = trainer.train(config, str(tmp_path / "run"))
    assert np.isfinite(metrics["loss"])
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("parameters:"))
    model = InstructBlip(model_config(config))
    shapes = _flat(
        jax.eval_shape(trainer._init_fn(model, trainer.example_batch(config)), jax.random.key(0))
    )
    lora_count = sum(np.prod(v.value.shape) for p, v in shapes.items() if lora.is_lora_path(p))
    projection = sum(
        np.prod(v.value.shape) for p, v in shapes.items() if p.startswith("language_projection/")
    )
    assert f"parameters: {lora_count + projection:,d} trainable" in line, line
    assert f"{lora_count:,d} of them LoRA" in line


def test_lora_config_reads_lists_strings_and_patterns():
    config = from_config_dict(
        dict(lora=dict(rank=8, targets="a$, b$", rank_pattern={"a": 2}, alpha_pattern=[["b", 4]]))
    ).lora
    assert config == LoraConfig(
        rank=8, targets=("a$", "b$"), rank_pattern=(("a", 2),), alpha_pattern=(("b", 4.0),)
    )
    assert lora.rank_and_scaling(config, "x/a") == (2, 8.0)
    assert lora.rank_and_scaling(config, "x/b") == (8, 0.5)
    assert lora.rank_and_scaling(config, "x/c") is None
    assert lora.without(from_config_dict(dict(lora=dict(rank=8, targets="a")))).lora == LoraConfig()


def test_describe_lists_every_parameter_with_lora_trainable(data_root):
    from ib_jax.convert.__main__ import describe_paths

    config = _config(data_root, scan=True)
    config.train.trainable = "^language_projection/"
    lines = {line.split()[0]: line for line in describe_paths(config)}
    a = lines["language_model/encoder/layers/self_attention/q/lora_a"]
    assert "[2, 32, 4]" in a and a.split()[-2:] == ["256", "trainable"]
    assert lines["language_projection/kernel"].endswith("trainable")
    assert not lines["language_model/encoder/layers/self_attention/q/kernel"].endswith("trainable")
    assert len(lines) == len(
        _flat(_init(InstructBlip(model_config(config)), _batch(config), abstract=True))
    )


@pytest.mark.parametrize(
    "name", ["tiny", pytest.param("demo_vicuna", marks=pytest.mark.slow)], ids=["t5", "llama"]
)
def test_generation_through_the_decode_caches_equals_the_merged_model(name):
    """Beam search with LoRA (prefill and cached steps) gives the merged model's tokens."""
    config = load_config(os.path.join(REPO, f"configs/{name}.py"))
    config.unlock()
    config.model.lora.update(
        dict(rank=4, targets=r"self_attention/(q|v|q_proj|v_proj)$,mlp/(wo|down_proj)$")
    )
    model = InstructBlip(model_config(config))
    batch = _batch(config)
    params = _random_b(nn.unbox(_init(model, batch)))
    prompt = {k: v for k, v in batch.items() if k != "labels"}
    plain = InstructBlip(lora.without(model.config))

    def generate(m, p):
        return np.asarray(ib_jax.generate(m, p, prompt, max_new_tokens=6, num_beams=2))

    tokens = generate(model, params)
    np.testing.assert_array_equal(
        tokens, generate(plain, lora.merge(jax.device_get(params), model.config.lora))
    )
    assert (tokens != generate(plain, _without_lora(params))).any(), "the adapter changes nothing"
