"""BLIP-2 (+ BERT) -> an InstructBLIP initialisation, against HF `Blip2ForConditionalGeneration`.

With the instruction switched off (`instruction_aware=False`) the converted model is BLIP-2 itself:
logits and loss equal the reference's. The Q-Former's text side equals BERT's tensors, plus the
`[DEC]` row LAVIS appends. LAVIS stage-2 and stage-1 files are built from the same tensors.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import ib_jax
from ib_jax.convert import api, blip2, core
from ib_jax.models.instructblip import InstructBlip
from tests import reference

BERT_VOCAB = 100  # the Q-Former's vocabulary is this + the [DEC] row


def _blip2_config():
    from transformers import Blip2Config

    base = reference.tiny_config("t5").to_dict()
    qformer = dict(
        vocab_size=BERT_VOCAB,  # unused: HF's BLIP-2 Q-Former has no text input
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=4,
        num_attention_heads=4,
        max_position_embeddings=64,
        cross_attention_frequency=2,
    )
    return Blip2Config(
        vision_config=base["vision_config"],
        qformer_config=qformer,
        text_config=base["text_config"],
        num_query_tokens=reference.NUM_QUERY_TOKENS,
        image_token_index=reference.IMAGE_TOKEN,
    )


def build_blip2(seed: int = 0):
    from transformers import Blip2ForConditionalGeneration

    torch.manual_seed(seed)
    config = _blip2_config()
    config._attn_implementation = "eager"
    return reference.randomize_(Blip2ForConditionalGeneration(config), seed)


def build_bert(seed: int = 0, hidden_size: int = 32):
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=BERT_VOCAB,
        hidden_size=hidden_size,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=64,
    )
    model = BertModel(config)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            is_scale = "LayerNorm" in name and name.endswith("weight")
            param.copy_(1.0 + 0.1 * noise if is_scale else 0.2 * noise)
    return model.eval()


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("blip2")
    model, bert = build_blip2(seed=0), build_bert(seed=1)
    model.save_pretrained(root / "blip2")
    bert.save_pretrained(root / "bert")
    return str(root / "blip2"), str(root / "bert"), model, bert


@pytest.fixture(scope="module")
def reference_outputs(sources):
    _, _, model, _ = sources
    batch = reference.inputs(seed=1)
    hf = reference.to_hf(batch)
    hf.pop("qformer_input_ids"), hf.pop("qformer_attention_mask")  # BLIP-2 has no text input
    with torch.no_grad():
        out = model(**hf)
    return batch, out.logits.numpy(), float(out.loss)


def _run(model, params, batch):
    return jax.jit(lambda p, b: model.apply({"params": p}, **b))(
        params, {k: jnp.asarray(v) for k, v in batch.items()}
    )


@pytest.mark.parametrize("scan", [False, True], ids=["unscanned", "scanned"])
def test_blip2_outputs_with_the_instruction_switched_off(sources, reference_outputs, scan):
    directory, bert_dir, _, _ = sources
    batch, logits, loss = reference_outputs
    plan = blip2.plan_blip2(directory, bert_dir, scan_layers=scan)
    assert plan.config.instruction_aware and plan.config.qformer.vocab_size == BERT_VOCAB + 1
    params = api.to_memory(plan)
    import dataclasses

    model = InstructBlip(dataclasses.replace(plan.config, instruction_aware=False))
    out = _run(model, params, batch)
    np.testing.assert_allclose(np.asarray(out.logits), logits, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(float(out.loss), loss, atol=1e-4, rtol=1e-5)
    # The instruction-aware model runs on the same initialisation.
    aware = _run(InstructBlip(plan.config), params, batch)
    assert np.isfinite(np.asarray(aware.logits)).all()


def test_text_side_is_bert_plus_a_dec_row(sources):
    directory, bert_dir, _, bert = sources
    config, params = _convert(directory, bert_dir, seed=3)
    state = {k: v.detach().numpy() for k, v in bert.state_dict().items()}
    qformer = params["qformer"]
    words = qformer["word_embeddings"]["embedding"]
    assert words.shape == (BERT_VOCAB + 1, 32)
    np.testing.assert_array_equal(words[:BERT_VOCAB], state["embeddings.word_embeddings.weight"])
    # The [DEC] row: N(0, initializer_range^2) as transformers' resize in LAVIS draws it.
    assert 0.01 < words[BERT_VOCAB].std() < 0.04 and abs(words[BERT_VOCAB].mean()) < 0.02
    np.testing.assert_array_equal(
        qformer["position_embeddings"]["embedding"], state["embeddings.position_embeddings.weight"]
    )
    freq = config.qformer.cross_attention_frequency
    for layer in range(config.qformer.num_layers):
        ffn = qformer[f"groups_{layer // freq}"][f"layer_{layer % freq}"]["ffn_text"]
        prefix = f"encoder.layer.{layer}."
        np.testing.assert_array_equal(
            ffn["intermediate"]["kernel"], state[prefix + "intermediate.dense.weight"].T
        )
        np.testing.assert_array_equal(
            ffn["intermediate"]["bias"], state[prefix + "intermediate.dense.bias"]
        )
        np.testing.assert_array_equal(
            ffn["output"]["kernel"], state[prefix + "output.dense.weight"].T
        )
        np.testing.assert_array_equal(
            ffn["output_layernorm"]["scale"], state[prefix + "output.LayerNorm.weight"]
        )
    # Another seed draws another [DEC] row and changes nothing else.
    _, other = _convert(directory, bert_dir, seed=4)
    other_words = other["qformer"]["word_embeddings"]["embedding"]
    assert not np.array_equal(other_words[BERT_VOCAB], words[BERT_VOCAB])
    np.testing.assert_array_equal(other_words[:BERT_VOCAB], words[:BERT_VOCAB])


def _convert(directory, bert_dir, **kw):
    plan = blip2.plan_blip2(directory, bert_dir, **kw)
    return plan.config, api.to_memory(plan)


def test_provenance_counts_every_parameter(sources):
    directory, bert_dir, model, bert = sources
    plan = blip2.plan_blip2(directory, bert_dir, seed=0)
    table = blip2.provenance(plan)
    count = lambda origin: sum(p for _, p in table[origin].values())  # noqa: E731
    bert_used = sum(
        v.numel()
        for k, v in bert.state_dict().items()
        if k.startswith("embeddings.word")
        or k.startswith("embeddings.position")
        or (".intermediate." in k or (".output." in k and ".attention." not in k))
    )
    assert count(f"BERT {bert_dir}") == bert_used
    assert count(f"BLIP-2 {directory}") == sum(
        v.numel() for k, v in model.state_dict().items() if not k.endswith("embed_tokens.weight")
    )
    assert count("fresh init (seed 0)") == 32  # the [DEC] row
    total = sum(x.size for x in jax.tree_util.tree_leaves(api.to_memory(plan)))
    assert sum(count(origin) for origin in table) == total
    assert "fresh init (seed 0)" in blip2.summary(plan)


def test_cli_writes_an_initialisation(sources, reference_outputs, tmp_path, capsys):
    from ib_jax.convert.__main__ import main

    directory, bert_dir, _, _ = sources
    out_dir = str(tmp_path / "init")
    main(["--blip2", directory, "--bert", bert_dir, "--out", out_dir, "--scan_layers"])
    printed = capsys.readouterr().out
    assert f"BERT {bert_dir}" in printed and "[DEC] row" in printed
    batch, logits, loss = reference_outputs
    model, params = ib_jax.load_pretrained(out_dir, instruction_aware=False)
    out = _run(model, params, batch)
    np.testing.assert_allclose(np.asarray(out.logits), logits, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(float(out.loss), loss, atol=1e-4, rtol=1e-5)
    assert os.path.exists(os.path.join(out_dir, "provenance.json"))


def test_wrong_bert_width_names_file_and_tensor(sources, tmp_path):
    directory, _, _, _ = sources
    build_bert(hidden_size=48).save_pretrained(tmp_path / "bert_large")
    with pytest.raises(
        core.ConversionError,
        match=r"bert_large/model\.safetensors: embeddings\.word_embeddings\.weight is \(100, 48\)"
        r".* 32 wide",
    ):
        blip2.plan_blip2(directory, str(tmp_path / "bert_large"))


def test_missing_files_are_named(sources, tmp_path):
    directory, bert_dir, _, _ = sources
    with pytest.raises(FileNotFoundError, match=r"nowhere has no config\.json"):
        blip2.plan_blip2(directory, str(tmp_path / "nowhere"))
    with pytest.raises(core.ConversionError, match=r"needs a BERT \(--bert\)"):
        blip2.plan_blip2(directory, None)
    with pytest.raises(FileNotFoundError, match=r"checkpoint .*absent\.pth does not exist"):
        blip2.plan_blip2(str(tmp_path / "absent.pth"), bert_dir)
