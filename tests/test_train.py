"""Training on 8 simulated CPU devices: sharded step == one device, resume, SIGTERM, non-finite loss."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from data_pipelines import demo_data, train_pipeline
from ib_jax import checkpoint, sharding
from ib_jax.configs_util import load_config, model_config
from ib_jax.models.instructblip import InstructBlip
from ib_jax.train import optimizer as optim
from ib_jax.train import trainer
from ib_jax.train.state import TrainState, split_params
from ib_jax.train.step import make_train_step

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("demo_data"))


def _config(data_root, **mesh):
    config = load_config(os.path.join(REPO, f"configs/tiny.py:root={data_root}"))
    config.unlock()
    if mesh:
        config.mesh.shape.update(mesh)
    return config


def _losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {row["step"]: row["loss"] for row in map(json.loads, f)}


def _one_step(config, batch_np, devices=None):
    """Loss and updated trainable params after one step on the config's mesh."""
    model = InstructBlip(model_config(config))
    mesh, rules = sharding.make_mesh(config.mesh, devices), sharding.axis_rules(config.mesh)
    tx = optim.make_optimizer(config.train)
    with sharding.activate(mesh, rules):
        init = trainer._init_fn(model, trainer.example_batch(config))
        shardings = sharding.logical_shardings(jax.eval_shape(init, jax.random.key(0)), mesh, rules)
        params = jax.jit(lambda r: nn.unbox(init(r)), out_shardings=shardings)(jax.random.key(0))
        trainable, frozen = split_params(params, [r"^qformer/", r"^language_projection/"])
        state = TrainState(
            step=jnp.zeros((), jnp.int32),
            trainable=trainable,
            opt_state=jax.jit(tx.init)(trainable),
        )
        state_sh = jax.tree_util.tree_map(lambda x: x.sharding, state)
        frozen_sh = jax.tree_util.tree_map(lambda x: x.sharding, frozen)
        batch = sharding.global_batch(batch_np, mesh)
        step = jax.jit(
            make_train_step(model, tx, config.train.grad_accum_steps),
            in_shardings=(state_sh, frozen_sh, {k: v.sharding for k, v in batch.items()}),
            out_shardings=(state_sh, sharding.replicated(mesh)),
            donate_argnums=(0,),
        )
        new_state, metrics = step(state, frozen, batch)
        sharded_dims = [s.spec for s in jax.tree_util.tree_leaves(state_sh.trainable)]
        return float(metrics["loss"]), jax.device_get(new_state.trainable), sharded_dims


def test_sharded_step_equals_single_device(data_root):
    config = _config(data_root)
    demo_data.ensure_from_config(config.data)
    batch = next(
        iter(train_pipeline.build_train_dataset(config.data, process_index=0, process_count=1))
    )
    assert jax.device_count() == 8
    loss_8, params_8, specs = _one_step(_config(data_root, data=2, fsdp=2, tensor=2), batch)
    assert any(any(axis is not None for axis in spec) for spec in specs), "nothing was sharded"
    loss_1, params_1, _ = _one_step(
        _config(data_root, data=1, fsdp=1, tensor=1), batch, jax.devices()[:1]
    )
    np.testing.assert_allclose(loss_8, loss_1, rtol=1e-6)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5), params_8, params_1
    )


def test_gradient_accumulation_matches_full_batch(data_root):
    config = _config(data_root, data=8)
    demo_data.ensure_from_config(config.data)
    batch = next(
        iter(train_pipeline.build_train_dataset(config.data, process_index=0, process_count=1))
    )
    loss_full, params_full, _ = _one_step(config, batch)
    config.train.grad_accum_steps = 2
    config.mesh.shape.data = 4  # each micro-batch of 4 still splits over the data axis
    config.mesh.shape.fsdp = 2
    loss_accum, params_accum, _ = _one_step(config, batch)
    np.testing.assert_allclose(loss_full, loss_accum, rtol=2e-2)  # mean of micro-batch means
    leaves = zip(jax.tree_util.tree_leaves(params_full), jax.tree_util.tree_leaves(params_accum))
    assert max(float(np.abs(a - b).max()) for a, b in leaves) < 1e-2


@pytest.fixture(scope="module")
def straight_run(data_root, tmp_path_factory):
    """6 uninterrupted steps, checkpoints at 3 and 6."""
    workdir = str(tmp_path_factory.mktemp("straight"))
    trainer.train(_config(data_root, data=8), workdir)
    return workdir


def test_resume_on_another_mesh_continues_with_the_same_losses(data_root, straight_run, tmp_path):
    interrupted = str(tmp_path / "interrupted")
    first = _config(data_root, data=8)
    first.train.stop_after_steps = (
        3  # same schedule (a function of num_steps), interrupted at step 3
    )
    trainer.train(first, interrupted)
    assert checkpoint.make_manager(interrupted, read_only=True).latest_step() == 3
    assert not os.path.exists(os.path.join(interrupted, checkpoint.FINAL_MARKER))
    trainer.train(_config(data_root, data=2, fsdp=2, tensor=2), interrupted)
    expected, resumed = _losses(straight_run), _losses(interrupted)
    assert sorted(resumed) == list(range(1, 7))
    for step in range(4, 7):
        np.testing.assert_allclose(resumed[step], expected[step], rtol=1e-5, err_msg=f"step {step}")
    assert os.path.exists(os.path.join(interrupted, checkpoint.FINAL_MARKER))


def test_non_finite_loss_stops_without_touching_checkpoints(data_root, straight_run, tmp_path):
    workdir = str(tmp_path / "diverged")
    shutil.copytree(straight_run, workdir)
    config = _config(data_root, data=8)
    config.train.num_steps = 12
    config.train.learning_rate = 1e12
    config.train.warmup_steps = 0
    with pytest.raises(trainer.NonFiniteLossError, match="non-finite loss"):
        trainer.train(config, workdir)
    assert checkpoint.make_manager(workdir, read_only=True).all_steps() == [3, 6]


def test_sigterm_saves_and_exits_cleanly(data_root, tmp_path):
    workdir = str(tmp_path / "preempted")
    env = dict(os.environ, JAX_NUM_CPU_DEVICES="1", PYTHONPATH=REPO)
    command = [
        sys.executable,
        "-m",
        "ib_jax.train",
        f"--config={REPO}/configs/tiny.py:root={data_root}",
        f"--workdir={workdir}",
        "--config.train.num_steps=100000",
        "--config.checkpoint.every_steps=100000",
    ]
    process = subprocess.Popen(
        command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    metrics = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + 240
    while time.time() < deadline and (
        not os.path.exists(metrics) or len(open(metrics).readlines()) < 3
    ):
        time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output[-3000:]
    saved = checkpoint.make_manager(workdir, read_only=True).latest_step()
    assert saved is not None and saved >= 3


def test_pretrained_init_trains_only_the_trainable_parameters(data_root, tmp_path):
    from ib_jax.convert import api

    config = _config(data_root, data=8)
    config.train.num_steps = 2
    config.checkpoint.every_steps = 2
    mesh, rules = sharding.make_mesh(config.mesh), sharding.axis_rules(config.mesh)
    with sharding.activate(mesh, rules):
        program = trainer.build_program(config, mesh, rules)
        pretrained = jax.device_get(nn.unbox(program.init(jax.random.key(7))))
    api.save_converted(str(tmp_path / "pretrained"), model_config(config), pretrained)
    config.init.pretrained = str(tmp_path / "pretrained")
    workdir = str(tmp_path / "finetune")
    trainer.train(config, workdir)
    _, trained, _ = checkpoint.restore_params(workdir)
    before = traverse_util.flatten_dict(pretrained, sep="/")
    after = traverse_util.flatten_dict(trained, sep="/")
    changed = {path for path in before if not np.array_equal(before[path], after[path])}
    assert changed, "nothing trained"
    assert all(
        path.startswith(("qformer/", "language_projection/", "vision/post_layernorm/"))
        for path in changed
    )
    assert "qformer/query_tokens" in changed
