"""The mixed-precision policy (ib_jax/contract/precision.py) on the tiny model, on CPU.

bf16_mixed against fp32 on the same fan-in initialised weights: the loss within 1e-2 relative and
the Q-Former's gradient direction kept (cosine >= 0.99); the compiled training step holds the
frozen towers once, in bf16 (argument bytes), and never materialises an fp32 copy of them (temp
bytes, on an accelerator, below the size of the bf16 towers themselves, half of what an fp32 copy
would need; on CPU the program itself is checked for fp32 upcasts of frozen kernels, because
XLA:CPU upcasts every bf16 matmul's operands on its own).
"""

import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from ib_jax import sharding
from ib_jax.configs_util import load_config, model_config
from ib_jax.contract import precision
from ib_jax.models.instructblip import InstructBlip
from ib_jax.train import trainer
from ib_jax.train.state import cast_floating, split_params
from ib_jax.train.step import loss_fn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOSS_RTOL = 1e-2
GRAD_COSINE = 0.99


def _config(tmp_path, name: str):
    config = load_config(os.path.join(REPO, f"configs/tiny.py:root={tmp_path}"))
    config.unlock()
    # tiny.py names the old fields (fp32); the policy replaces them.
    config.model.dtype = config.model.param_dtype = config.train.frozen_dtype = ""
    config.model.precision = name
    return config


def _batch(config, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    batch = {}
    for key, spec in trainer.example_batch(config).items():
        if jnp.issubdtype(spec.dtype, jnp.floating):
            batch[key] = rng.standard_normal(spec.shape).astype(np.float32)
        elif key.endswith("attention_mask"):
            batch[key] = np.ones(spec.shape, np.int32)
        else:
            batch[key] = rng.integers(2, 200, spec.shape).astype(np.int32)
    return batch


def _loss_and_grads(config, params, batch):
    model = InstructBlip(model_config(config))
    trainable, frozen = split_params(params, config.train.trainable)
    frozen = cast_floating(frozen, precision.frozen_dtype(config))
    grad_fn = jax.jit(jax.value_and_grad(lambda t, f, b: loss_fn(model, t, f, b)))
    loss, grads = grad_fn(trainable, frozen, batch)
    return float(loss), grads, frozen


def test_policy_resolution_and_conflicts(tmp_path):
    config = _config(tmp_path, "bf16_mixed")
    assert precision.resolve(config.model, config.train) == precision.Policy(
        "bfloat16", "float32", "bfloat16"
    )
    assert model_config(config).dtype == "bfloat16"
    assert model_config(config).param_dtype == "float32"
    config.train.frozen_dtype = "float32"
    with pytest.raises(ValueError, match=r"precision.*config\.train\.frozen_dtype='float32'"):
        precision.frozen_dtype(config)
    config.model.dtype = "float32"
    with pytest.raises(ValueError, match=r"config\.model\.dtype='float32'"):
        model_config(config)
    config.model.precision = "fp16"
    with pytest.raises(ValueError, match="config.model.precision='fp16'"):
        model_config(config)
    # Without precision the old fields decide, as before the policy existed.
    config.model.precision = ""
    assert precision.frozen_dtype(config) == "float32"
    assert model_config(config).dtype == "float32"


def test_bf16_mixed_loss_and_qformer_gradients_follow_fp32(tmp_path):
    fp32, mixed = _config(tmp_path, "fp32"), _config(tmp_path, "bf16_mixed")
    batch = _batch(fp32)
    init = trainer._init_fn(InstructBlip(model_config(fp32)), trainer.example_batch(fp32))
    params = nn.unbox(jax.jit(init)(jax.random.key(3)))  # fan-in scaled kernels, fp32
    loss32, grads32, _ = _loss_and_grads(fp32, params, batch)
    loss16, grads16, frozen16 = _loss_and_grads(mixed, params, batch)

    assert {x.dtype for x in jax.tree_util.tree_leaves(frozen16)} == {jnp.dtype(jnp.bfloat16)}
    assert {x.dtype for x in jax.tree_util.tree_leaves(grads16)} == {jnp.dtype(jnp.float32)}
    assert np.isfinite(loss16)
    assert abs(loss16 - loss32) <= LOSS_RTOL * abs(loss32), (loss16, loss32)
    flat32 = traverse_util.flatten_dict(grads32, sep="/")
    flat16 = traverse_util.flatten_dict(grads16, sep="/")
    qformer = sorted(k for k in flat32 if k.startswith("qformer/"))
    assert qformer
    g32 = np.concatenate([np.ravel(flat32[k]) for k in qformer]).astype(np.float64)
    g16 = np.concatenate([np.ravel(flat16[k]) for k in qformer]).astype(np.float64)
    cosine = g32 @ g16 / (np.linalg.norm(g32) * np.linalg.norm(g16))
    assert cosine >= GRAD_COSINE, cosine


def _nbytes(tree) -> int:
    return sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree_util.tree_leaves(tree))


def _count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def _wide_frozen_config(tmp_path, name: str, **old_fields):
    """Frozen towers 512 wide, batch 1, a 32-px image: parameters dominate memory."""
    config = _config(tmp_path, name)
    config.model.update(old_fields.pop("model", {}))
    config.train.update(old_fields)
    config.model.vision.update(hidden_size=512, intermediate_size=2048, num_heads=8)
    config.model.qformer.encoder_hidden_size = 512
    config.model.text.update(d_model=512, d_kv=64, d_ff=1024, num_heads=8)
    config.data.global_batch_size = 1
    config.mesh.shape.update(data=1)
    return config


def _lowered_step(config):
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
    rules = sharding.axis_rules(config.mesh)
    with sharding.activate(mesh, rules):
        program = trainer.build_program(config, mesh, rules)
        lowered = program.step_fn.lower(
            program.abstract_state, program.abstract_frozen, program.abstract_batch
        )
    return program, lowered


def _upcasts(lowered, min_elements: int) -> list[str]:
    """The program's (pre-backend) bf16 -> f32 converts of tensors with >= min_elements."""
    found = []
    pattern = r"stablehlo\.convert .*: \(tensor<([\dx]+)xbf16>\) -> tensor<[\dx]+xf32>"
    for match in re.finditer(pattern, lowered.as_text()):
        if int(np.prod([int(d) for d in match.group(1).split("x")])) >= min_elements:
            found.append(match.group(0))
    return found


def test_no_fp32_copy_of_the_frozen_towers_in_the_compiled_step(tmp_path):
    program, lowered = _lowered_step(_wide_frozen_config(tmp_path, "bf16_mixed"))
    memory = lowered.compile().memory_analysis()
    n_frozen = _count(program.abstract_frozen)
    n_trainable = _count(program.abstract_state.trainable)
    assert n_frozen > 20 * n_trainable  # the frozen towers dominate
    frozen_bytes = 2 * n_frozen  # bf16
    assert _nbytes(program.abstract_frozen) == frozen_bytes
    # Arguments: the bf16 towers once, fp32 master weights and Adam's two fp32 moments.
    expected = frozen_bytes + 3 * 4 * n_trainable
    extras = _nbytes(program.abstract_batch) + 4096  # the batch, step and optimizer counters
    assert expected <= memory.argument_size_in_bytes <= expected + extras, (
        memory.argument_size_in_bytes,
        expected,
    )
    # The program never upcasts a frozen kernel (the smallest is 512 x 512; activations at batch
    # 1 are far smaller): only activations go to fp32, for norms, softmax and the loss.
    assert _upcasts(lowered, 512 * 512) == []
    if jax.default_backend() != "cpu":
        # XLA:CPU has no bf16 matmul and upcasts every bf16 dot's operands itself, so the compiled
        # scratch is only a statement about the program on accelerators: there an fp32 copy of
        # the frozen towers would need 2 * frozen_bytes.
        assert memory.temp_size_in_bytes < frozen_bytes, (memory.temp_size_in_bytes, frozen_bytes)


def test_upcast_check_sees_an_fp32_compute_on_bf16_towers(tmp_path):
    """The check above can fail: old fields asking fp32 compute on bf16-stored frozen towers make
    the program convert every frozen kernel to an fp32 copy."""
    config = _wide_frozen_config(
        tmp_path, "", model=dict(dtype="float32", param_dtype="float32"), frozen_dtype="bfloat16"
    )
    _, lowered = _lowered_step(config)
    assert len(_upcasts(lowered, 512 * 512)) >= 8


def test_pretrained_start_places_frozen_towers_in_bf16(tmp_path):
    """config.init.pretrained under bf16_mixed: the frozen towers arrive cast (on the host) and
    sharded as the step expects, the trainable ones as fp32 master weights, values unchanged."""
    from ib_jax.convert import api

    config = _config(tmp_path, "bf16_mixed")
    mesh, rules = sharding.make_mesh(config.mesh), sharding.axis_rules(config.mesh)
    with sharding.activate(mesh, rules):
        program = trainer.build_program(config, mesh, rules)
        pretrained = jax.device_get(nn.unbox(program.init(jax.random.key(7))))
        api.save_converted(str(tmp_path / "pretrained"), model_config(config), pretrained)
        config.init.pretrained = str(tmp_path / "pretrained")
        state, frozen = trainer.initial_state(config, program)
    want_trainable, want_frozen = split_params(pretrained, config.train.trainable)
    got = traverse_util.flatten_dict(frozen, sep="/")
    specs = traverse_util.flatten_dict(program.abstract_frozen, sep="/")
    for path, want in traverse_util.flatten_dict(want_frozen, sep="/").items():
        assert got[path].dtype == jnp.bfloat16, path
        assert got[path].sharding == specs[path].sharding, path
        np.testing.assert_array_equal(np.asarray(got[path]), np.asarray(want).astype(jnp.bfloat16))
    got = traverse_util.flatten_dict(state.trainable, sep="/")
    for path, want in traverse_util.flatten_dict(want_trainable, sep="/").items():
        assert got[path].dtype == jnp.float32, path
        np.testing.assert_array_equal(np.asarray(got[path]), want)
