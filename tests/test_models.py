"""Model behaviour beyond reference parity: the BLIP-2 ablation switch, video, dtypes, T5 decode cache."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ib_jax.contract.batch import MODEL_INPUTS
from ib_jax.contract.model import ModelConfig, QFormerConfig, T5Config, VisionConfig
from ib_jax.models.instructblip import InstructBlip
from tests import reference

# Needs the PyTorch reference (torch + transformers): the reference CI lane only.
pytestmark = pytest.mark.reference

CONFIG = ModelConfig(
    vision=VisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_layers=2,
        num_heads=4,
        image_size=28,
        patch_size=14,
    ),
    qformer=QFormerConfig(
        vocab_size=100,
        hidden_size=32,
        intermediate_size=48,
        num_layers=2,
        num_heads=4,
        max_position_embeddings=64,
        cross_attention_frequency=1,
        encoder_hidden_size=32,
    ),
    text=T5Config(
        vocab_size=128,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
    ),
    num_query_tokens=4,
)


def _init(config, batch):
    model = InstructBlip(config)
    params = model.init(jax.random.key(0), **{k: jnp.asarray(v) for k, v in batch.items()})[
        "params"
    ]
    return model, jax.tree_util.tree_map(
        lambda x: x.value if hasattr(x, "value") else x,
        params,
        is_leaf=lambda x: hasattr(x, "value"),
    )


def test_blip2_ablation_ignores_the_instruction():
    batch = reference.inputs(seed=0)
    config = dataclasses.replace(CONFIG, instruction_aware=False)
    model, params = _init(config, batch)
    assert "word_embeddings" not in params["qformer"]
    other = dict(batch, qformer_input_ids=np.roll(batch["qformer_input_ids"], 1, axis=1))
    a, b = model.apply({"params": params}, **batch), model.apply({"params": params}, **other)
    np.testing.assert_array_equal(np.asarray(a.qformer_output), np.asarray(b.qformer_output))
    aware_model, aware_params = _init(CONFIG, batch)
    c = aware_model.apply({"params": aware_params}, **batch)
    d = aware_model.apply({"params": aware_params}, **other)
    assert np.abs(np.asarray(c.qformer_output) - np.asarray(d.qformer_output)).max() > 1e-4


def test_video_frames_concatenate_their_query_tokens():
    batch = reference.inputs(seed=1)
    model, params = _init(CONFIG, batch)
    frames = np.stack(
        [batch["pixel_values"], batch["pixel_values"][::-1], batch["pixel_values"] * 0.5], axis=1
    )
    out = model.apply({"params": params}, **dict(batch, pixel_values=frames))
    assert out.language_model_inputs.shape == (2, 3 * CONFIG.num_query_tokens, CONFIG.text.d_model)
    single = model.apply({"params": params}, **dict(batch, pixel_values=frames[:, 1]))
    np.testing.assert_allclose(
        np.asarray(out.language_model_inputs[:, 4:8]),
        np.asarray(single.language_model_inputs),
        atol=1e-5,
    )


def test_bfloat16_compute_stays_close_to_float32():
    batch = reference.inputs(seed=2)
    model, params = _init(CONFIG, batch)
    full = model.apply({"params": params}, **batch)
    half = InstructBlip(dataclasses.replace(CONFIG, dtype="bfloat16")).apply(
        {"params": params}, **batch
    )
    assert half.logits.dtype == jnp.float32  # logits and loss always come back in float32
    assert abs(float(half.loss) - float(full.loss)) < 0.05 * abs(float(full.loss))


def test_t5_prefill_and_steps_equal_the_teacher_forced_decoder():
    batch = reference.inputs(seed=3)
    inputs = [batch[k] for k in MODEL_INPUTS]
    for scan in (False, True):
        config = dataclasses.replace(CONFIG, scan_layers=scan)
        model, params = _init(config, batch)
        # Teacher forcing on these labels feeds the decoder [start=0, 5, 9, 17] / [0, 3, 3, 8].
        labels = jnp.asarray([[5, 9, 17, 1], [3, 3, 8, 1]], jnp.int32)
        context = model.apply({"params": params}, *inputs, method=model.encode_prompt)
        full = model.apply({"params": params}, context, labels, method=model.target_logits)
        prompt, variables = model.apply(
            {"params": params},
            *inputs,
            max_new_tokens=4,
            method=model.prefill,
            mutable=["cache"],
        )
        steps = [prompt.logits[:, 0]]
        for t in range(3):
            logits, variables = model.apply(
                {"params": params, "cache": variables["cache"]},
                labels[:, t : t + 1],
                method=model.step,
                mutable=["cache"],
            )
            steps.append(logits[:, 0])
        for leaf in jax.tree_util.tree_leaves(variables["cache"]):
            assert leaf.shape[0] == 2  # batch first everywhere: beams reorder with one gather
        np.testing.assert_allclose(np.stack(steps, 1), np.asarray(full), atol=1e-5)
