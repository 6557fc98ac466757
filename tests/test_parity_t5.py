"""InstructBLIP-FlanT5 against the Hugging Face reference, through `save_pretrained` and conversion."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import ib_jax
from ib_jax.convert import api, core
from ib_jax.models.instructblip import InstructBlip
from tests import reference

# Needs the PyTorch reference (torch + transformers): the reference CI lane only.
pytestmark = pytest.mark.reference


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    model = reference.build("t5", seed=0)
    directory = tmp_path_factory.mktemp("hf_t5")
    model.save_pretrained(directory)
    return str(directory), model


@pytest.fixture(scope="module")
def hf_outputs(hf_dir):
    _, model = hf_dir
    batch = reference.inputs(seed=1)
    with torch.no_grad():
        out = model(**reference.to_hf(batch))
        nq = reference.NUM_QUERY_TOKENS
        query_output = out.qformer_outputs.last_hidden_state[:, :nq]
        projected = model.language_projection(query_output)
    return batch, {
        "image_embeds": out.vision_outputs.last_hidden_state.numpy(),
        "qformer_output": query_output.numpy(),
        "language_model_inputs": projected.numpy(),
        "encoder_hidden": out.language_model_outputs.encoder_last_hidden_state.numpy(),
        "logits": out.logits.numpy(),
        "loss": out.loss.numpy(),
    }


def _run(model, params, batch):
    return jax.jit(lambda p, b: model.apply({"params": p}, **b))(
        params, {k: jnp.asarray(v) for k, v in batch.items()}
    )


@pytest.mark.parametrize("scan", [False, True], ids=["unscanned", "scanned"])
def test_every_stage_matches_reference(hf_dir, hf_outputs, scan):
    directory, _ = hf_dir
    batch, expected = hf_outputs
    model, params = ib_jax.load_pretrained(
        directory, scan_layers=scan, remat_policy="dots" if scan else "none"
    )
    out = _run(model, params, batch)
    for name in ("image_embeds", "qformer_output", "language_model_inputs", "encoder_hidden"):
        np.testing.assert_allclose(
            np.asarray(getattr(out, name)), expected[name], atol=1e-5, rtol=1e-5, err_msg=name
        )
    np.testing.assert_allclose(np.asarray(out.logits), expected["logits"], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(float(out.loss), float(expected["loss"]), atol=1e-4, rtol=1e-5)


def test_untied_head_and_activation_follow_the_checkpoint(hf_dir):
    directory, model = hf_dir
    config, params, report = api.convert_hf(directory)
    assert not config.text.tie_word_embeddings and not config.text.scale_decoder_outputs
    assert config.text.dense_act_fn == "gelu_new"  # HF's reading of feed_forward_proj="gated-gelu"
    head = params["language_model"]["lm_head"]["kernel"]
    np.testing.assert_array_equal(head, model.language_model.lm_head.weight.detach().numpy().T)
    assert report == {"aliases": [], "unused": []}


def test_position_interpolation_matches_torch_bicubic(hf_dir):
    directory, model = hf_dir
    batch = reference.inputs(seed=2, image_size=42)  # 3x3 patches from a 2x2 position grid
    with torch.no_grad():
        pixels = reference.to_hf(batch)["pixel_values"]
        expected = model.vision_model(
            pixels, interpolate_pos_encoding=True
        ).last_hidden_state.numpy()
    flax_model, params = ib_jax.load_pretrained(directory)
    out = _run(flax_model, params, batch)
    np.testing.assert_allclose(np.asarray(out.image_embeds), expected, atol=1e-5, rtol=1e-5)


def test_converted_directory_round_trip(hf_dir, tmp_path):
    directory, _ = hf_dir
    config, params, _ = api.convert_hf(directory, scan_layers=True)
    api.save_converted(str(tmp_path / "converted"), config, params)
    restored_config, restored = api.load_converted(str(tmp_path / "converted"), scan_layers=False)
    assert restored_config == dataclasses.replace(config, scan_layers=False)
    unscanned = core.unstack_scanned(params)
    jax.tree_util.tree_map(np.testing.assert_array_equal, restored, unscanned)


def test_cli_converts_a_save_pretrained_directory(hf_dir, hf_outputs, tmp_path):
    from ib_jax.convert.__main__ import main

    directory, _ = hf_dir
    out_dir = str(tmp_path / "cli")
    main(["--hf", directory, "--out", out_dir, "--scan_layers"])
    with open(os.path.join(out_dir, "config.json")) as f:
        assert json.load(f)["scan_layers"] is True
    batch, expected = hf_outputs
    model, params = ib_jax.load_pretrained(out_dir)
    np.testing.assert_allclose(
        np.asarray(_run(model, params, batch).logits), expected["logits"], atol=1e-4, rtol=1e-4
    )


def _edited_copy(hf_dir, tmp_path, edit):
    from safetensors.numpy import load_file, save_file

    directory, _ = hf_dir
    state = load_file(os.path.join(directory, "model.safetensors"))
    edit(state)
    target = tmp_path / "edited"
    target.mkdir()
    save_file(state, str(target / "model.safetensors"))
    (target / "config.json").write_text(open(os.path.join(directory, "config.json")).read())
    return str(target)


def test_missing_key_is_named(hf_dir, tmp_path):
    path = _edited_copy(
        hf_dir, tmp_path, lambda s: s.pop("qformer.encoder.layer.1.output.dense.weight")
    )
    with pytest.raises(
        core.ConversionError, match=r"missing: .*groups_0/layer_1/ffn_text/output/kernel"
    ):
        api.convert_hf(path)


def test_unexpected_key_is_named(hf_dir, tmp_path):
    path = _edited_copy(
        hf_dir, tmp_path, lambda s: s.update({"qformer.extra.weight": np.zeros((2, 2), np.float32)})
    )
    with pytest.raises(
        core.ConversionError, match=r"unexpected key qformer\.extra\.weight \(2, 2\)"
    ):
        api.convert_hf(path)


def test_shape_mismatch_is_named(hf_dir, tmp_path):
    def shrink(state):
        state["language_projection.weight"] = state["language_projection.weight"][:, :16]

    path = _edited_copy(hf_dir, tmp_path, shrink)
    with pytest.raises(
        core.ConversionError, match=r"shape mismatch for language_projection\.weight: \(32, 16\)"
    ):
        api.convert_hf(path)


def test_lavis_state_dict_with_separate_towers(tmp_path):
    """A trimmed LAVIS file (Q-Former, query tokens, t5_proj, ln_vision) + EVA ViT file + T5 file."""
    model = reference.build("t5", seed=5)
    with torch.no_grad():  # LAVIS has no key bias in the fused qkv: make the reference agree
        for layer in model.vision_model.encoder.layers:
            width = layer.self_attn.qkv.bias.shape[0] // 3
            layer.self_attn.qkv.bias[width : 2 * width] = 0
    lavis, vit, t5 = _as_lavis_files(model.state_dict())
    torch.save({"model": lavis}, tmp_path / "instruct_blip_trimmed.pth")
    torch.save(vit, tmp_path / "eva_vit_g.pth")
    torch.save(t5, tmp_path / "flan_t5.bin")
    model.save_pretrained(tmp_path / "hf")

    batch = reference.inputs(seed=3)
    with torch.no_grad():
        expected = model(**reference.to_hf(batch)).logits.numpy()
    hf_config, _, _ = api.convert_hf(str(tmp_path / "hf"))
    config, params, report = api.convert_lavis(
        str(tmp_path / "instruct_blip_trimmed.pth"),
        hf_config,
        vit=str(tmp_path / "eva_vit_g.pth"),
        language_model=str(tmp_path / "flan_t5.bin"),
    )
    assert "Qformer.bert.embeddings.position_ids" in report["unused"]
    out = _run(InstructBlip(config), params, batch)
    np.testing.assert_allclose(np.asarray(out.logits), expected, atol=1e-4, rtol=1e-4)


_LAVIS_NAMES = [  # (HF substring, LAVIS substring), applied in order
    ("vision_model.embeddings.class_embedding", "cls_token"),
    ("vision_model.embeddings.position_embedding", "pos_embed"),
    ("vision_model.embeddings.patch_embedding", "patch_embed.proj"),
    ("vision_model.encoder.layers.", "blocks."),
    ("self_attn.qkv", "attn.qkv"),
    ("self_attn.projection", "attn.proj"),
    ("layer_norm1", "norm1"),
    ("layer_norm2", "norm2"),
    ("qformer.", "Qformer.bert."),
    ("attention.attention.", "attention.self."),
    ("embeddings.layernorm", "embeddings.LayerNorm"),
    ("language_projection", "t5_proj"),
    ("vision_model.post_layernorm", "ln_vision"),
]


def _as_lavis_files(state):
    """HF state dict -> (trimmed LAVIS dict, EVA ViT dict without prefix, T5 dict without prefix)."""
    lavis, vit, t5 = {"Qformer.bert.embeddings.position_ids": torch.arange(64)[None]}, {}, {}
    for key, value in state.items():
        if key.startswith("language_model."):
            t5[key[len("language_model.") :]] = value
            continue
        for hf, lavis_name in _LAVIS_NAMES:
            key = key.replace(hf, lavis_name)
        if key.endswith("attn.qkv.bias"):
            q_bias, _, v_bias = value.chunk(3)
            vit[key.replace("qkv.bias", "q_bias")], vit[key.replace("qkv.bias", "v_bias")] = (
                q_bias,
                v_bias,
            )
        elif key.startswith(("cls_token", "pos_embed", "patch_embed", "blocks.")):
            vit[key] = value
        else:
            lavis[key] = value
    return lavis, vit, t5
