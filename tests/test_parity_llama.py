"""InstructBLIP-Vicuna (LLaMA) against the Hugging Face reference, through `save_pretrained` and conversion.

HF takes `[<image>]*NQ + ids` with the image placeholders replaced by the projected queries. For the
loss, HF gets the sequence LAVIS builds (`concat_text_input_output`, written out here per example
with Python lists): `[query][instruction][target][pads]` and labels on the target only. For the
prompt and decoding, HF gets LAVIS's generation layout (instruction left-padded after the queries)
with the positions HF's `generate` uses, `cumsum(mask) - 1`.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import ib_jax
from ib_jax.convert import api
from ib_jax.models.instructblip import InstructBlip
from tests import reference
from tests.test_parity_t5 import _as_lavis_files

# Needs the PyTorch reference (torch + transformers): the reference CI lane only.
pytestmark = pytest.mark.reference

NQ = reference.NUM_QUERY_TOKENS
PAD = 0  # the tiny reference's pad id; HF never attends to it


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    model = reference.build("llama", seed=0)
    directory = tmp_path_factory.mktemp("hf_llama")
    model.save_pretrained(directory)
    return str(directory), model


@pytest.fixture(scope="module")
def loaded(hf_dir):
    directory, _ = hf_dir
    return {
        scan: ib_jax.load_pretrained(
            directory, scan_layers=scan, remat_policy="dots" if scan else "none"
        )
        for scan in (False, True)
    }


def _batch(seed: int) -> dict[str, np.ndarray]:
    """Three examples: a full instruction, a right-padded one and a left-padded one (padding sides mixed
    in one batch: each example's layout is handled on its own)."""
    batch = reference.inputs(seed=seed, batch=3)
    for name in ("input_ids", "attention_mask"):
        batch[name][2] = np.roll(batch[name][2], int((batch["attention_mask"][2] == 0).sum()))
    assert batch["attention_mask"][1, -1] == 0 and batch["attention_mask"][2, 0] == 0
    return batch


def _real(ids, mask):
    return [int(t) for t, m in zip(ids, mask) if m]


def _hf_call(model, batch, ids, mask, labels=None, positions=False):
    """HF forward with our pixels/Q-Former inputs and the given LM token rows (placeholders included)."""
    kwargs = reference.to_hf(
        {
            k: batch[k]
            for k in (
                "pixel_values",
                "qformer_input_ids",
                "qformer_attention_mask",
                "input_ids",
                "attention_mask",
            )
        }
    )
    kwargs["input_ids"], kwargs["attention_mask"] = torch.tensor(ids), torch.tensor(mask)
    if labels is not None:
        kwargs["labels"] = torch.tensor(labels)
    if positions:
        kwargs["position_ids"] = (torch.tensor(mask).cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        return model(**kwargs)


def _lavis_training_sequence(batch):
    """LAVIS concat_text_input_output: rows of ids, mask, labels, and each instruction's length."""
    rows, masks, labels, lengths = [], [], [], []
    length = NQ + batch["input_ids"].shape[1] + batch["labels"].shape[1]
    for ids, mask, target in zip(batch["input_ids"], batch["attention_mask"], batch["labels"]):
        instruction, output = _real(ids, mask), [int(t) for t in target if t != -100]
        pads = length - NQ - len(instruction) - len(output)
        rows.append([reference.IMAGE_TOKEN] * NQ + instruction + output + [PAD] * pads)
        masks.append([1] * (NQ + len(instruction) + len(output)) + [0] * pads)
        labels.append([-100] * (NQ + len(instruction)) + output + [-100] * pads)
        lengths.append(len(instruction))
    return rows, masks, labels, lengths


_COMPILED = {}  # one jitted function per (config, method): tests that share one skip a compile


def _jitted(model, method=None, **kw):
    key = (model.config, method, tuple(sorted(kw.items())))
    if key not in _COMPILED:
        _COMPILED[key] = jax.jit(
            lambda variables, *args: model.apply(variables, *args, method=method, **kw)
        )
    return _COMPILED[key]


def _run(model, params, batch):
    inputs = {k: jnp.asarray(v) for k, v in batch.items()}
    return _jitted(model)(
        {"params": params},
        *(
            inputs.get(name)
            for name in (
                "pixel_values",
                "qformer_input_ids",
                "qformer_attention_mask",
                "input_ids",
                "attention_mask",
            )
        ),
        inputs.get("labels"),
    )


@pytest.mark.parametrize("scan", [False, True], ids=["unscanned", "scanned"])
def test_loss_and_target_logits_match_reference(hf_dir, loaded, scan):
    _, hf_model = hf_dir
    batch = _batch(seed=1)
    rows, masks, labels, lengths = _lavis_training_sequence(batch)
    expected = _hf_call(hf_model, batch, rows, masks, labels)
    model, params = loaded[scan]
    out = _run(model, params, batch)

    query_output = expected.qformer_outputs.last_hidden_state[:, :NQ]
    with torch.no_grad():
        projected = hf_model.language_projection(query_output).numpy()
    for name, want in (
        ("image_embeds", expected.vision_outputs.last_hidden_state.numpy()),
        ("qformer_output", query_output.numpy()),
        ("language_model_inputs", projected),
    ):
        np.testing.assert_allclose(
            np.asarray(getattr(out, name)), want, atol=1e-5, rtol=1e-5, err_msg=name
        )

    np.testing.assert_allclose(float(out.loss), float(expected.loss), atol=1e-4, rtol=1e-5)
    hf_logits = expected.logits.numpy()
    for b, n in enumerate(lengths):
        valid = batch["labels"][b] != -100
        predicting = (
            NQ + n + np.flatnonzero(valid) - 1
        )  # HF's shift: target j is predicted one slot earlier
        np.testing.assert_allclose(
            np.asarray(out.logits)[b, valid], hf_logits[b, predicting], atol=1e-4, rtol=1e-4
        )


def _lavis_prompt(batch):
    """LAVIS generation layout: [query][left-padded instruction]; rows, masks and real lengths."""
    width = batch["input_ids"].shape[1]
    rows, masks = [], []
    for ids, mask in zip(batch["input_ids"], batch["attention_mask"]):
        instruction = _real(ids, mask)
        pads = width - len(instruction)
        rows.append([reference.IMAGE_TOKEN] * NQ + [PAD] * pads + instruction)
        masks.append([1] * NQ + [0] * pads + [1] * len(instruction))
    return rows, masks


def test_prompt_logits_match_reference(hf_dir, loaded):
    """Without labels: logits over [query][instruction][pads], compared at the real tokens."""
    _, hf_model = hf_dir
    batch = _batch(seed=2)
    del batch["labels"]
    rows, masks = _lavis_prompt(batch)
    hf_logits = _hf_call(hf_model, batch, rows, masks, positions=True).logits.numpy()
    model, params = loaded[False]
    logits = np.asarray(_run(model, params, batch).logits)
    assert logits.shape[1] == NQ + batch["input_ids"].shape[1]
    for b, mask in enumerate(masks):
        real = np.flatnonzero(mask)
        np.testing.assert_allclose(logits[b, : len(real)], hf_logits[b, real], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("scan", [False, True], ids=["unscanned", "scanned"])
def test_prefill_and_steps_match_reference(hf_dir, loaded, scan):
    """Greedy decoding with the cache; every step's logits equal HF's full forward over the prompt
    plus the tokens chosen so far."""
    _, hf_model = hf_dir
    batch = _batch(seed=3)
    del batch["labels"]
    model, params = loaded[scan]
    model = InstructBlip(
        dataclasses.replace(model.config, remat_policy="none")
    )  # remat is for gradients
    num_steps = 4
    prefill = _jitted(model, InstructBlip.prefill, max_new_tokens=num_steps, mutable=("cache",))
    step = _jitted(model, InstructBlip.step, mutable=("cache",))
    names = (
        "pixel_values",
        "qformer_input_ids",
        "qformer_attention_mask",
        "input_ids",
        "attention_mask",
    )
    prompt, variables = prefill({"params": params}, *(jnp.asarray(batch[name]) for name in names))
    logits = prompt.logits
    cache = variables["cache"]
    assert all(
        leaf.shape[0] == 3 for leaf in jax.tree_util.tree_leaves(cache)
    )  # batch first, for beam gathers
    ours, chosen = [np.asarray(logits[:, 0])], []
    for _ in range(num_steps):
        chosen.append(np.argmax(ours[-1], axis=-1))
        logits, variables = step(
            {"params": params, "cache": cache}, jnp.asarray(chosen[-1][:, None], jnp.int32)
        )
        cache = variables["cache"]
        ours.append(np.asarray(logits[:, 0]))

    rows, masks = _lavis_prompt(batch)
    generated = np.stack(chosen, axis=1).tolist()
    rows = [r + g for r, g in zip(rows, generated)]
    masks = [m + [1] * num_steps for m in masks]
    hf_logits = _hf_call(hf_model, batch, rows, masks, positions=True).logits.numpy()
    prompt_end = NQ + batch["input_ids"].shape[1] - 1
    for k, step_logits in enumerate(ours):
        np.testing.assert_allclose(
            step_logits, hf_logits[:, prompt_end + k], atol=1e-4, rtol=1e-4, err_msg=f"step {k}"
        )


def test_hf_config_reads_the_llama_text_config(hf_dir):
    directory, model = hf_dir
    config, params, report = api.convert_hf(directory)
    text = config.text
    assert (text.hidden_size, text.num_layers, text.num_heads, text.num_kv_heads) == (32, 2, 4, 2)
    assert text.rope_theta == 500.0 and not text.tie_word_embeddings
    head = params["language_model"]["lm_head"]["kernel"]
    np.testing.assert_array_equal(head, model.language_model.lm_head.weight.detach().numpy().T)
    assert report == {"aliases": [], "unused": []}


def test_lavis_state_dict_with_separate_vicuna_file(tmp_path):
    """A trimmed LAVIS file (Q-Former, query tokens, llm_proj, ln_vision) + EVA ViT file + a Vicuna
    file one row short (LAVIS adds [PAD] at load time) with its old persistent rotary buffers."""
    model = reference.build("llama", seed=5)
    lm = model.language_model
    with torch.no_grad():
        for layer in model.vision_model.encoder.layers:  # LAVIS has no key bias in the fused qkv
            width = layer.self_attn.qkv.bias.shape[0] // 3
            layer.self_attn.qkv.bias[width : 2 * width] = 0
        for table in (
            lm.model.embed_tokens.weight,
            lm.lm_head.weight,
        ):  # the converter's fill for [PAD]
            table[-1] = table[:-1].mean(0)
    lavis, vit, llm = _as_lavis_files(model.state_dict())
    lavis = {key.replace("t5_proj", "llm_proj"): value for key, value in lavis.items()}
    llm = {
        key: value[:-1] if key in ("model.embed_tokens.weight", "lm_head.weight") else value
        for key, value in llm.items()
    }
    llm["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(4)
    torch.save({"model": lavis}, tmp_path / "instruct_blip_vicuna_trimmed.pth")
    torch.save(vit, tmp_path / "eva_vit_g.pth")
    torch.save(llm, tmp_path / "vicuna.bin")
    model.save_pretrained(tmp_path / "hf")

    batch = _batch(seed=4)
    rows, masks, labels, _ = _lavis_training_sequence(batch)
    expected = _hf_call(model, batch, rows, masks, labels)
    hf_config, _, _ = api.convert_hf(str(tmp_path / "hf"))
    config, params, report = api.convert_lavis(
        str(tmp_path / "instruct_blip_vicuna_trimmed.pth"),
        hf_config,
        vit=str(tmp_path / "eva_vit_g.pth"),
        language_model=str(tmp_path / "vicuna.bin"),
    )
    assert "llm_model.model.layers.0.self_attn.rotary_emb.inv_freq" in report["unused"]
    out = _run(InstructBlip(config), params, batch)
    np.testing.assert_allclose(float(out.loss), float(expected.loss), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize(
    "variant",
    [
        dict(attention_bias=True),
        dict(mlp_bias=True),
        dict(head_dim=16),
        dict(rope_parameters=dict(rope_type="linear", factor=2.0, rope_theta=1e4)),
    ],
)
def test_unsupported_llama_variants_are_refused(variant):
    from ib_jax.convert.hf_config import model_config_from_hf

    config = reference.tiny_config("llama").to_dict()
    config["text_config"].update(variant)
    with pytest.raises(ValueError, match="not supported"):
        model_config_from_hf(config)
