"""configs/blip2_stage2.py: BLIP-2 stage 2 (no instruction into the Q-Former) on caption data."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from flax import traverse_util

from ib_jax.configs_util import load_config, model_config
from ib_jax.models.instructblip import InstructBlip
from ib_jax.train.state import is_trainable

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs/blip2_stage2.py")


def test_config_reads_its_options_and_passes_the_rest_to_the_data():
    config = load_config(f"{CONFIG}:root=/data/x,weights=/ckpt,lm=vicuna13b,batch=16")
    model = model_config(config)
    assert not model.instruction_aware and model.lm_type == "llama"
    assert (model.text.hidden_size, model.text.num_layers) == (5120, 40)
    assert config.init.blip2 == "/ckpt/blip2_pretrained.pth"
    assert config.init.vit == "/ckpt/eva_vit_g.pth"
    assert config.init.language_model == "/ckpt/vicuna-13b"
    assert [d["name"] for d in config.data.datasets] == ["coco_caption", "web_capfilt"]
    assert config.data.datasets[0]["ann_path"].startswith("/data/x/")
    assert config.data.global_batch_size == 16
    assert config.data.lm_type == "llama"
    # A `train=` in the argument replaces the caption mixture.
    assert [d["name"] for d in load_config(f"{CONFIG}:train=textcaps").data.datasets] == [
        "textcaps"
    ]
    with pytest.raises(ValueError, match=r"lm='opt'"):
        load_config(f"{CONFIG}:lm=opt")


def test_model_builds_without_a_qformer_text_side_and_trains_the_bridge():
    config = load_config(CONFIG)
    model = InstructBlip(model_config(config))
    size = config.data.image_size
    shapes = jax.eval_shape(
        lambda: model.init(
            jax.random.key(0),
            jnp.zeros((1, size, size, 3)),
            None,
            None,
            jnp.zeros((1, 4), jnp.int32),
            jnp.ones((1, 4), jnp.int32),
            jnp.zeros((1, 4), jnp.int32),
        )["params"]
    )
    paths = traverse_util.flatten_dict(nn.unbox(shapes), sep="/")
    assert not any("word_embeddings" in p or "position_embeddings" in p for p in paths)
    assert not any("ffn_text" in p for p in paths)
    assert paths["language_projection/kernel"].shape == (768, 4096)
    trainable = {p for p in paths if is_trainable(p, config.train.trainable)}
    assert "qformer/query_tokens" in trainable
    assert {"language_projection/kernel", "vision/post_layernorm/scale"} <= trainable
    assert trainable == {
        p
        for p in paths
        if p.startswith(("qformer/", "language_projection/", "vision/post_layernorm/"))
    }
