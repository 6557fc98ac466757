"""LoRA against Hugging Face peft: adapters made with `get_peft_model` on the tiny re-randomized
InstructBLIP (T5 and LLaMA), A and B both random, converted with `--peft`, exported back."""

import dataclasses
import json
import os

import numpy as np
import pytest
import torch

import ib_jax
from ib_jax.convert import core
from tests import reference
from tests import test_parity_llama as llama_parity
from tests import test_parity_t5 as t5_parity

# Needs the PyTorch reference (torch + transformers + peft): the reference CI lane only.
pytestmark = pytest.mark.reference

# The LM's attention and MLP projections, the Q-Former's attention (self and cross), the ViT's
# fused qkv; one rank and one alpha overridden, the projection saved whole.
TARGETS = {
    "t5": ["q", "v", "wi_0", "wo", "query", "value", "qkv"],
    "llama": ["q_proj", "v_proj", "gate_proj", "down_proj", "query", "value", "qkv"],
}


def _randomize_adapter_(model, seed: int) -> None:
    """A and B ~ N(0, 0.1^2) (peft starts B at zero: the adapter would change nothing), the
    modules_to_save copy moved off the base."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                param.add_(0.1 * torch.randn(param.shape, generator=generator))


@pytest.fixture(scope="module", params=["t5", "llama"])
def made(request, tmp_path_factory):
    """(text, base dir, adapter dir, the peft model) for one LM family."""
    from peft import LoraConfig, get_peft_model

    text = request.param
    root = tmp_path_factory.mktemp(f"peft_{text}")
    reference.build(text, seed=0).save_pretrained(root / "base")
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=TARGETS[text],
        rank_pattern={"qkv": 2},
        alpha_pattern={"value": 3.0},
        modules_to_save=["language_projection"],
    )
    model = get_peft_model(reference.build(text, seed=0), config)
    _randomize_adapter_(model, seed=1)
    model.save_pretrained(root / "adapter")
    return text, str(root / "base"), str(root / "adapter"), model.eval()


def _peft_and_ours(text, peft_model, model, params):
    """(peft's logits, ours) at the positions both compute, for one batch."""
    if text == "t5":
        batch = reference.inputs(seed=3)
        with torch.no_grad():
            want = peft_model(**reference.to_hf(batch)).logits.numpy()
        return want, np.asarray(t5_parity._run(model, params, batch).logits)
    batch = llama_parity._batch(seed=3)
    del batch["labels"]
    rows, masks = llama_parity._lavis_prompt(batch)
    hf = llama_parity._hf_call(peft_model, batch, rows, masks, positions=True).logits.numpy()
    ours = np.asarray(llama_parity._run(model, params, batch).logits)
    real = [np.flatnonzero(mask) for mask in masks]
    return (
        np.concatenate([hf[b, r] for b, r in enumerate(real)]),
        np.concatenate([ours[b, : len(r)] for b, r in enumerate(real)]),
    )


@pytest.fixture(scope="module")
def converted(made, tmp_path_factory):
    from ib_jax.convert.__main__ import main

    text, base, adapter, _ = made
    out = str(tmp_path_factory.mktemp(f"converted_{text}") / "model")
    assert main(["--hf", base, "--peft", adapter, "--out", out]) == 0
    return out


@pytest.mark.parametrize("scan", [False, True], ids=["unscanned", "scanned"])
def test_converted_adapter_gives_peft_logits(made, converted, scan):
    text, _, _, peft_model = made
    model, params = ib_jax.load_pretrained(converted, scan_layers=scan)
    lora = model.config.lora
    assert lora.rank == 4 and lora.alpha == 8 and lora.modules_to_save == ("language_projection",)
    want, got = _peft_and_ours(text, peft_model, model, params)
    base_model, base_params = ib_jax.load_pretrained(made[1], scan_layers=scan)
    _, base_logits = _peft_and_ours(text, peft_model, base_model, base_params)
    assert np.abs(want - base_logits).max() > 1e-2, "the adapter changes nothing: a vacuous test"
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_merged_equals_unmerged(made, converted, tmp_path):
    from ib_jax.export import main

    text, _, _, peft_model = made
    out = str(tmp_path / "merged")
    assert main(["--checkpoint", converted, "--out", out, "--merge_lora"]) == 0
    merged_model, merged = ib_jax.load_pretrained(out)
    assert merged_model.config.lora.rank == 0
    model, params = ib_jax.load_pretrained(converted)
    _, unmerged_logits = _peft_and_ours(text, peft_model, model, params)
    _, merged_logits = _peft_and_ours(text, peft_model, merged_model, merged)
    np.testing.assert_allclose(merged_logits, unmerged_logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("scan", [False, True], ids=["unscanned", "scanned"])
def test_convert_then_export_gives_the_adapter_back_bit_for_bit(made, tmp_path, scan):
    from peft import PeftModel
    from safetensors.numpy import load_file

    from ib_jax.convert.__main__ import main as convert
    from ib_jax.export import main as export

    text, base, adapter, peft_model = made
    converted = str(tmp_path / "converted")
    layout = ["--scan_layers"] if scan else []
    assert convert(["--hf", base, "--peft", adapter, "--out", converted, *layout]) == 0
    out = str(tmp_path / "adapter")
    assert export(["--checkpoint", converted, "--out", out, "--base_model", base]) == 0
    want = load_file(os.path.join(adapter, "adapter_model.safetensors"))
    got = load_file(os.path.join(out, "adapter_model.safetensors"))
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        assert got[key].dtype == value.dtype and got[key].shape == value.shape, key
        assert got[key].tobytes() == value.tobytes(), key
    with open(os.path.join(out, "adapter_config.json")) as f:
        written = json.load(f)
    assert (written["r"], written["lora_alpha"]) == (4, 8)
    # peft itself loads it onto the base and computes what the original adapter computes.
    loaded = PeftModel.from_pretrained(reference.build(text, seed=0), out).eval()
    want_logits, _ = _peft_and_ours(text, peft_model, *ib_jax.load_pretrained(converted))
    got_logits, _ = _peft_and_ours(text, loaded, *ib_jax.load_pretrained(converted))
    np.testing.assert_array_equal(got_logits, want_logits)


def _edited_adapter(made, tmp_path, edit_config=None, edit_state=None):
    from safetensors.numpy import load_file, save_file

    _, _, adapter, _ = made
    target = tmp_path / "edited_adapter"
    target.mkdir()
    state = load_file(os.path.join(adapter, "adapter_model.safetensors"))
    with open(os.path.join(adapter, "adapter_config.json")) as f:
        settings = json.load(f)
    if edit_state:
        edit_state(state)
    if edit_config:
        edit_config(settings)
    save_file(state, str(target / "adapter_model.safetensors"))
    (target / "adapter_config.json").write_text(json.dumps(settings))
    return str(target)


def test_an_adapter_key_that_maps_to_nothing_is_named(made, tmp_path):
    from ib_jax.convert import peft

    key = "base_model.model.language_model.lm_head.lora_embedding_A"
    path = _edited_adapter(
        made, tmp_path, edit_state=lambda s: s.update({key: np.zeros((4, 32), np.float32)})
    )
    with pytest.raises(core.ConversionError, match=r"lora_embedding_A"):
        peft.plan_peft(made[1], path)


def test_settings_we_do_not_implement_are_refused(made, tmp_path):
    from ib_jax.convert import peft

    path = _edited_adapter(made, tmp_path, edit_config=lambda c: c.update(use_dora=True))
    with pytest.raises(ValueError, match="use_dora=True"):
        peft.plan_peft(made[1], path)


def test_benchmark_lora_step_compares_like_with_like(tmp_path):
    """benchmarks.run's `lora` section at tiny sizes: peft and ours train the same number of
    parameters from the same first loss (B = 0: the base model's)."""
    from benchmarks import reference as bench_reference
    from benchmarks import run, run_lora

    bc = dataclasses.replace(run.tiny(), warmup=0, repeats=1)
    hf_model = bench_reference.build(run.model_config(bc), seed=0)
    hf_model.save_pretrained(tmp_path / "hf")
    model, params = ib_jax.load_pretrained(str(tmp_path / "hf"))
    res = {"lora": run_lora.measure(bc, hf_model, model, params, run.make_batch(bc), print)}
    ref, ours = res["lora"]["reference"], res["lora"]["ours"]
    assert ref["trainable_params"] == ours["trainable_params"] > 0
    np.testing.assert_allclose(ours["first_loss"], ref["first_loss"], rtol=1e-5)
    rows = run_lora.rows(res)
    assert len(rows) == 2 and rows[1].endswith("| yes |"), rows
