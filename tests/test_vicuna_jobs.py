"""InstructBLIP-Vicuna through the jobs: a sharded training step, resume, and the eval job on a
converted HF checkpoint against HF `generate`."""

import os

import jax
import numpy as np
import pytest

from configs import demo_vicuna
from data_pipelines import demo_data, train_pipeline
from ib_jax import checkpoint
from ib_jax.configs_util import load_config
from ib_jax.train import trainer
from tests import test_train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(data_root, **mesh):
    """configs/tiny.py with a tiny LLaMA (Vicuna token layout of the demo SentencePiece model)."""
    config = load_config(os.path.join(REPO, f"configs/tiny.py:root={data_root}"))
    config.unlock()
    llama = dict(demo_vicuna.tiny_llama(demo_data.DEMO_SPM), hidden_size=32, num_layers=2)
    llama.update(intermediate_size=64, num_heads=4, num_kv_heads=2, max_position_embeddings=64)
    config.model.lm_type, config.model.text = "llama", llama
    config.data.lm_type = "llama"
    if mesh:
        config.mesh.shape.update(mesh)
    return config


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("demo_data"))


def test_vicuna_sharded_step_equals_single_device(data_root):
    config = _config(data_root)
    demo_data.ensure_from_config(config.data)
    batch = next(
        iter(train_pipeline.build_train_dataset(config.data, process_index=0, process_count=1))
    )
    assert jax.device_count() == 8
    loss_8, params_8, specs = test_train._one_step(
        _config(data_root, data=2, fsdp=2, tensor=2), batch
    )
    assert any(any(axis is not None for axis in spec) for spec in specs), "nothing was sharded"
    loss_1, params_1, _ = test_train._one_step(
        _config(data_root, data=1, fsdp=1, tensor=1), batch, jax.devices()[:1]
    )
    assert np.isfinite(loss_8)
    np.testing.assert_allclose(loss_8, loss_1, rtol=1e-6)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-6), params_8, params_1
    )


def test_vicuna_resume_continues_with_the_same_losses(data_root, tmp_path):
    straight = str(tmp_path / "straight")
    trainer.train(_config(data_root, data=8), straight)
    interrupted = str(tmp_path / "interrupted")
    first = _config(data_root, data=8)
    first.train.stop_after_steps = 3  # same schedule (a function of num_steps), stopped at step 3
    trainer.train(first, interrupted)
    assert checkpoint.make_manager(interrupted, read_only=True).latest_step() == 3
    assert not os.path.exists(os.path.join(interrupted, checkpoint.FINAL_MARKER))
    trainer.train(_config(data_root, data=2, fsdp=2, tensor=2), interrupted)
    expected, resumed = test_train._losses(straight), test_train._losses(interrupted)
    assert sorted(resumed) == list(range(1, 7))
    for step in range(1, 7):
        np.testing.assert_allclose(resumed[step], expected[step], rtol=1e-5, err_msg=f"step {step}")
    assert os.path.exists(os.path.join(interrupted, checkpoint.FINAL_MARKER))
