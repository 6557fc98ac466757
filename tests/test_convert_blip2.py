"""BLIP-2 (+ BERT) -> an InstructBLIP initialisation, against HF `Blip2ForConditionalGeneration`.

With the instruction switched off (`instruction_aware=False`) the converted model is BLIP-2 itself:
logits and loss equal the reference's. The Q-Former's text side equals BERT's tensors, plus the
`[DEC]` row LAVIS appends. LAVIS stage-2 and stage-1 files are built from the same tensors.
"""

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import ib_jax
from ib_jax.convert import api, blip2, core
from ib_jax.models.instructblip import InstructBlip
from tests import reference

# Needs the PyTorch reference (torch + transformers): the reference CI lane only.
pytestmark = pytest.mark.reference

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


# --- LAVIS files, built from the same tensors -------------------------------------------------

_LAVIS_NAMES = [  # (HF substring, LAVIS substring), applied in order
    ("vision_model.embeddings.class_embedding", "visual_encoder.cls_token"),
    ("vision_model.embeddings.position_embedding", "visual_encoder.pos_embed"),
    ("vision_model.embeddings.patch_embedding", "visual_encoder.patch_embed.proj"),
    ("vision_model.encoder.layers.", "visual_encoder.blocks."),
    ("self_attn.qkv", "attn.qkv"),
    ("self_attn.projection", "attn.proj"),
    ("layer_norm1", "norm1"),
    ("layer_norm2", "norm2"),
    ("vision_model.post_layernorm", "ln_vision"),
    ("qformer.layernorm", "Qformer.bert.embeddings.LayerNorm"),
    ("qformer.", "Qformer.bert."),
    ("attention.attention.", "attention.self."),
    ("language_projection", "t5_proj"),
    ("language_model.", "t5_model."),
]


def _lavis_state(model) -> dict[str, torch.Tensor]:
    """HF BLIP-2 state dict -> LAVIS blip2_t5 names (q/v biases split, position_ids buffer)."""
    out = {"Qformer.bert.embeddings.position_ids": torch.arange(64)[None]}
    for key, value in model.state_dict().items():
        for hf, lavis in _LAVIS_NAMES:
            key = key.replace(hf, lavis)
        if key.endswith("attn.qkv.bias"):
            q_bias, _, v_bias = value.chunk(3)
            out[key.replace("qkv.bias", "q_bias")] = q_bias
            out[key.replace("qkv.bias", "v_bias")] = v_bias
        else:
            out[key] = value
    return out


def _split(state, prefix):
    inside = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return inside, {k: v for k, v in state.items() if not k.startswith(prefix)}


@pytest.fixture(scope="module")
def lavis_files(sources, tmp_path_factory):
    """blip2 (k-bias zeroed: LAVIS has none) as HF dir, full and trimmed stage-2 files, the ViT
    and T5 files; a stage-1 file (text side = BERT + a [DEC] row, plus the stage-1 heads)."""
    _, bert_dir, _, bert = sources
    root = tmp_path_factory.mktemp("lavis")
    model = build_blip2(seed=5)
    with torch.no_grad():
        for layer in model.vision_model.encoder.layers:
            width = layer.self_attn.qkv.bias.shape[0] // 3
            layer.self_attn.qkv.bias[width : 2 * width] = 0
    model.save_pretrained(root / "hf")
    full = _lavis_state(model)
    torch.save({"model": full}, root / "stage2_full.pth")
    vit, rest = _split(full, "visual_encoder.")
    t5, trimmed = _split(rest, "t5_model.")
    torch.save({"model": trimmed}, root / "stage2.pth")
    torch.save(vit, root / "eva_vit_g.pth")
    torch.save(t5, root / "flan_t5.bin")

    stage1 = {k: v for k, v in trimmed.items() if not k.startswith("t5_proj")}
    words = bert.embeddings.word_embeddings.weight.detach()
    stage1["Qformer.bert.embeddings.word_embeddings.weight"] = torch.cat([words, words[:1] * 0.1])
    for key, value in bert.state_dict().items():
        if key.startswith("embeddings.position_embeddings") or (
            key.startswith("encoder.")
            and (".intermediate." in key or ".output." in key)
            and ".attention." not in key
        ):
            stage1["Qformer.bert." + key] = value
    stage1.update(
        {
            "Qformer.cls.predictions.bias": torch.zeros(BERT_VOCAB + 1),
            "vision_proj.weight": torch.ones(8, 32),
            "text_proj.weight": torch.ones(8, 32),
            "itm_head.weight": torch.ones(2, 32),
            "temp": torch.tensor(0.07),
        }
    )
    torch.save({"model": stage1}, root / "stage1.pth")
    return (
        {
            name: str(root / name)
            for name in (
                "hf",
                "stage2_full.pth",
                "stage2.pth",
                "eva_vit_g.pth",
                "flan_t5.bin",
                "stage1.pth",
            )
        },
        bert_dir,
        stage1,
    )


def test_lavis_stage2_equals_the_hf_route(lavis_files):
    files, bert_dir, _ = lavis_files
    expected_plan = blip2.plan_blip2(files["hf"], bert_dir, seed=2)
    expected = api.to_memory(expected_plan)
    for checkpoint, towers in (
        (files["stage2_full.pth"], {}),
        (
            files["stage2.pth"],
            dict(vit=files["eva_vit_g.pth"], language_model=files["flan_t5.bin"]),
        ),
    ):
        plan = blip2.plan_blip2(checkpoint, bert_dir, expected_plan.config, seed=2, **towers)
        assert "Qformer.bert.embeddings.position_ids" in plan.report["unused"]
        jax.tree_util.tree_map(np.testing.assert_array_equal, api.to_memory(plan), expected)


def _llama_config(config):
    import dataclasses

    from ib_jax.convert.hf_config import model_config_from_hf

    text = model_config_from_hf(reference.tiny_config("llama").to_dict()).text
    return dataclasses.replace(config, text=text)


@pytest.mark.parametrize("lm", ["t5", "llama"])
def test_stage1_with_a_fresh_projection(lavis_files, tmp_path, lm):
    files, _, stage1 = lavis_files
    config = blip2.plan_blip2(files["hf"], lavis_files[1]).config
    if lm == "llama":
        config = _llama_config(config)
        vicuna = reference.build("llama", seed=6).language_model.state_dict()
        # A Vicuna file is one row short: LAVIS adds [PAD] when it loads it.
        vicuna = {
            k: v[:-1] if "embed_tokens" in k or "lm_head" in k else v for k, v in vicuna.items()
        }
        torch.save(vicuna, tmp_path / "vicuna.bin")
        language_model = str(tmp_path / "vicuna.bin")
    else:
        language_model = files["flan_t5.bin"]
    towers = dict(vit=files["eva_vit_g.pth"], language_model=language_model)
    plans = [blip2.plan_blip2(files["stage1.pth"], None, config, seed=s, **towers) for s in (0, 1)]
    params, other = api.to_memory(plans[0]), api.to_memory(plans[1])
    np.testing.assert_array_equal(
        params["qformer"]["word_embeddings"]["embedding"],
        stage1["Qformer.bert.embeddings.word_embeddings.weight"].numpy(),
    )
    kernel = params["language_projection"]["kernel"]
    width = config.text.d_model if lm == "t5" else config.text.hidden_size
    assert kernel.shape == (32, width) and np.abs(kernel).max() <= 32**-0.5
    assert kernel.std() > 0.5 * 32**-0.5 / np.sqrt(3)  # U(-b, b) has std b / sqrt(3)
    assert not np.array_equal(kernel, other["language_projection"]["kernel"])
    jax.tree_util.tree_map(np.testing.assert_array_equal, params["qformer"], other["qformer"])
    for key in ("vision_proj.weight", "temp", "Qformer.cls.predictions.bias"):
        assert key in plans[0].report["unused"]
    table = blip2.provenance(plans[0])
    assert sum(p for _, p in table["fresh init (seed 0)"].values()) == 32 * width + width
    out = _run(InstructBlip(plans[0].config), params, reference.inputs(seed=2))
    assert np.isfinite(float(out.loss))


def test_stage2_file_where_stage1_is_needed(lavis_files):
    files, bert_dir, _ = lavis_files
    config = _llama_config(blip2.plan_blip2(files["hf"], bert_dir).config)
    with pytest.raises(
        core.ConversionError,
        match=r"stage2\.pth is a BLIP-2 stage-2 checkpoint for another language model "
        r"\(t5_proj\.weight; no Qformer\.bert\.embeddings\.word_embeddings\.weight\).*stage-1",
    ):
        blip2.plan_blip2(
            files["stage2.pth"],
            bert_dir,
            config,
            vit=files["eva_vit_g.pth"],
            language_model=files["flan_t5.bin"],
        )


@pytest.mark.parametrize(
    "case, message",
    [
        ("no_bert", r"stage2\.pth is a BLIP-2 stage-2 checkpoint: it has no Q-Former text side"),
        ("no_vit", r"stage2\.pth holds no visual_encoder\.\* tensors .*--vit"),
        ("stage1_with_bert", r"stage1\.pth is a stage-1 checkpoint.*--bert is not used"),
        (
            "vit_twice",
            r"visual_encoder\.cls_token is given twice: in .*stage2_full\.pth and in "
            r".*eva_vit_g\.pth",
        ),
    ],
)
def test_lavis_input_errors_name_file_and_tensor(lavis_files, case, message):
    files, bert_dir, _ = lavis_files
    config = blip2.plan_blip2(files["hf"], bert_dir).config
    vit, t5 = files["eva_vit_g.pth"], files["flan_t5.bin"]
    args = {
        "no_bert": (files["stage2.pth"], None, dict(vit=vit, language_model=t5)),
        "no_vit": (files["stage2.pth"], bert_dir, dict(language_model=t5)),
        "stage1_with_bert": (files["stage1.pth"], bert_dir, dict(vit=vit, language_model=t5)),
        "vit_twice": (files["stage2_full.pth"], bert_dir, dict(vit=vit)),
    }[case]
    with pytest.raises((core.ConversionError, ValueError), match=message):
        blip2.plan_blip2(args[0], args[1], config, **args[2])


def test_unexpected_and_mismatched_blip2_tensors_are_named(sources, tmp_path):
    from safetensors.numpy import load_file, save_file

    directory, bert_dir, _, _ = sources
    state = load_file(os.path.join(directory, "model.safetensors"))
    state["qformer.extra.weight"] = np.zeros((2, 2), np.float32)
    state["qformer.layernorm.weight"] = np.ones(16, np.float32)
    (tmp_path / "edited").mkdir()
    save_file(state, str(tmp_path / "edited" / "model.safetensors"))
    (tmp_path / "edited" / "config.json").write_text(
        open(os.path.join(directory, "config.json")).read()
    )
    with pytest.raises(core.ConversionError) as err:
        blip2.plan_blip2(str(tmp_path / "edited"), bert_dir)
    text = str(err.value)
    assert re.search(
        r"unexpected key qformer\.extra\.weight \(2, 2\).*edited/model\.safetensors", text
    )
    assert re.search(
        r"shape mismatch for qformer\.layernorm\.weight: \(16,\) cannot become "
        r"qformer/embeddings_layernorm/scale \(32,\).*edited/model\.safetensors",
        text,
    )


def test_cli_refuses_with_one_message(sources, tmp_path, capsys):
    from ib_jax.convert.__main__ import main

    directory, _, _, _ = sources
    assert main(["--blip2", directory, "--out", str(tmp_path / "x")]) == 1
    assert "needs a BERT (--bert)" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "x")


def test_config_init_names_a_blip2_start(sources):
    import dataclasses

    import ml_collections

    directory, bert_dir, _, _ = sources
    plan = blip2.plan_blip2(directory, bert_dir, seed=7)
    init = ml_collections.ConfigDict(dict(pretrained="", blip2=directory, bert=bert_dir, seed=7))
    scanned = dataclasses.replace(plan.config, scan_layers=True)
    expected = core.stack_scanned(api.to_memory(plan))
    jax.tree_util.tree_map(
        np.testing.assert_array_equal, blip2.initial_params(init, scanned), expected
    )
    # BLIP-2 training (no instruction input): the text side is left out.
    plain = blip2.initial_params(init, dataclasses.replace(plan.config, instruction_aware=False))
    assert "word_embeddings" not in plain["qformer"]
    assert "ffn_text" not in plain["qformer"]["groups_0"]["layer_0"]
    # LAVIS's exact GELU in the config where HF's config.json says tanh: the shapes decide.
    exact = dataclasses.replace(
        plan.config, text=dataclasses.replace(plan.config.text, dense_act_fn="gelu")
    )
    assert blip2.plan_blip2(directory, bert_dir, exact).config.text.dense_act_fn == "gelu"
    wider = dataclasses.replace(plan.config, text=dataclasses.replace(plan.config.text, d_ff=128))
    with pytest.raises(core.ConversionError, match=r"another architecture .*wi_0/kernel"):
        blip2.initial_params(init, wider)


def test_a_few_steps_from_a_blip2_start_lower_the_loss(tmp_path):
    """configs/tiny.py's architecture as a BLIP-2 + BERT pair, converted with --config, trained
    through `config.init.pretrained`: the loss on a demo batch drops."""
    import ml_collections
    from transformers import BertConfig, BertModel, Blip2Config, Blip2ForConditionalGeneration

    from data_pipelines import demo_data, train_pipeline
    from ib_jax import checkpoint
    from ib_jax.configs_util import load_config
    from ib_jax.contract.batch import TRAIN_KEYS
    from ib_jax.convert.__main__ import main
    from ib_jax.train import trainer

    config_path = f"configs/tiny.py:root={tmp_path / 'data'}"
    config = load_config(config_path)
    model_cfg, text = config.model, dict(config.model.text)
    hf = Blip2Config(
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
        ),
        qformer_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            cross_attention_frequency=1,
            encoder_hidden_size=32,
        ),
        text_config=dict(
            model_type="t5",
            feed_forward_proj="gated-gelu",
            tie_word_embeddings=False,
            **{
                k: text[k]
                for k in (
                    "vocab_size",
                    "d_model",
                    "d_kv",
                    "d_ff",
                    "num_layers",
                    "num_decoder_layers",
                    "num_heads",
                )
            },
        ),
        num_query_tokens=model_cfg.num_query_tokens,
    )
    torch.manual_seed(0)
    reference.randomize_(Blip2ForConditionalGeneration(hf)).save_pretrained(tmp_path / "blip2")
    bert = BertConfig(
        vocab_size=model_cfg.qformer.vocab_size - 1,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(bert).save_pretrained(tmp_path / "bert")
    out = str(tmp_path / "init")
    argv = ["--blip2", str(tmp_path / "blip2"), "--bert", str(tmp_path / "bert")]
    assert main([*argv, "--config", config_path, "--out", out]) == 0

    config.unlock()
    config.init.pretrained = out
    config.train.num_steps, config.checkpoint.every_steps = 8, 8
    demo_data.ensure_from_config(config.data)
    pipeline = train_pipeline.build_train_dataset(config.data, process_index=0, process_count=1)
    batch = {k: jnp.asarray(v) for k, v in next(iter(pipeline)).items() if k in TRAIN_KEYS}
    model, initial = ib_jax.load_pretrained(out)
    trainer.train(config, str(tmp_path / "run"))
    _, trained, _ = checkpoint.restore_params(str(tmp_path / "run"))
    loss = lambda params: float(model.apply({"params": params}, **batch).loss)  # noqa: E731
    before, after = loss(initial), loss(trained)
    print(f"demo batch loss {before:.4f} -> {after:.4f}")
    assert after < before, (before, after)

    # The trainer also starts from the sources themselves (config.init.blip2, no convert step),
    # with the same parameters, and refuses two starting points at once.
    from ib_jax.configs_util import model_config

    sources_init = ml_collections.ConfigDict(
        dict(pretrained="", blip2=str(tmp_path / "blip2"), bert=str(tmp_path / "bert"), seed=0)
    )
    layout = model_config(config)
    jax.tree_util.tree_map(
        np.testing.assert_array_equal,
        trainer._initial_params(sources_init, layout),
        trainer._initial_params(ml_collections.ConfigDict(dict(pretrained=out)), layout),
    )
    sources_init.pretrained = out
    with pytest.raises(ValueError, match="name one starting point"):
        trainer._initial_params(sources_init, layout)
