"""InstructBLIP-Vicuna through the jobs: a sharded training step, resume, and the eval job on a
converted HF checkpoint against HF `generate`."""

import os

import jax
import numpy as np
import pytest

from configs import demo_vicuna, evals
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


def _hf_vicuna(directory: str, image_token: int):
    """A tiny re-randomized HF InstructBLIP-Vicuna with the demo tokenizers' ids, saved; returned."""
    import sentencepiece
    from transformers import InstructBlipForConditionalGeneration

    from tests import reference

    pieces = sentencepiece.SentencePieceProcessor(model_file=demo_data.DEMO_SPM)
    end, pad = pieces.PieceToId("</s>"), pieces.GetPieceSize()
    hf_config = reference.tiny_config(
        "llama",
        vocab_size=image_token + 1,  # [PAD] = #pieces, then the `<image>` placeholder
        bos_token_id=end,
        eos_token_id=end,
        pad_token_id=pad,
    )
    hf_config.image_token_index = hf_config.image_token_id = image_token
    hf_config.qformer_config.vocab_size = sum(1 for _ in open(demo_data.DEMO_VOCAB)) + 1  # [DEC]
    hf_config._attn_implementation = "eager"
    model = reference.randomize_(InstructBlipForConditionalGeneration(hf_config), seed=3)
    model.save_pretrained(directory)
    return model


def _hf_generate(model, batch, image_token, settings, pad_id, eos_id):
    """HF `generate` (greedy or beam) on an eval batch: `<image>` placeholders in front, left padding."""
    import torch

    ids, mask = batch["input_ids"].astype(np.int64), batch["attention_mask"].astype(np.int64)
    queries = model.config.num_query_tokens
    ids = np.concatenate([np.full((len(ids), queries), image_token), ids], 1)
    mask = np.concatenate([np.ones((len(ids), queries), np.int64), mask], 1)
    for row in range(len(ids)):
        order = np.argsort(mask[row], kind="stable")  # pads first, token order kept
        ids[row], mask[row] = ids[row][order], mask[row][order]
    pixels = np.asarray(batch["pixel_values"], np.float32).transpose(0, 3, 1, 2)
    with torch.no_grad():
        out = model.generate(
            pixel_values=torch.from_numpy(pixels.copy()),
            qformer_input_ids=torch.from_numpy(batch["qformer_input_ids"].astype(np.int64)),
            qformer_attention_mask=torch.from_numpy(
                batch["qformer_attention_mask"].astype(np.int64)
            ),
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask),
            max_new_tokens=settings.max_new_tokens,
            min_new_tokens=settings.min_new_tokens,
            repetition_penalty=settings.repetition_penalty,
            num_beams=settings.num_beams,
            length_penalty=settings.length_penalty,
            do_sample=False,
            eos_token_id=eos_id,
            pad_token_id=pad_id,
        )
    return out.numpy()[:, ids.shape[1] :]


@pytest.mark.reference
@pytest.mark.parametrize(
    "decoding",
    [dict(num_beams=1), dict(num_beams=3, length_penalty=-1.0)],
    ids=["greedy", "beam3"],
)
def test_eval_job_on_a_converted_hf_vicuna_generates_as_hf(data_root, tmp_path, decoding):
    import json

    from data_pipelines import eval_pipeline
    from data_pipelines.text import LMTokenizer
    from ib_jax import decode
    from ib_jax.contract.config import evaluations
    from ib_jax.contract.text import text_format
    from ib_jax.eval import job as evaluate

    config = _config(data_root)
    demo_data.ensure_from_config(config.data)
    config.data.image_size = 28  # the reference model's vision tower
    del config.model  # the checkpoint's model is evaluated
    config.evals = evals.declare(["demo_vqa"])
    config.evals.demo_vqa.update(
        dict(decoding, max_new_tokens=5, min_new_tokens=1, repetition_penalty=1.0)
    )
    tokenizer = LMTokenizer(config.data.lm_spm, text_format("llama"))
    image_token = tokenizer.pad_id + 1
    hf_dir = str(tmp_path / "hf_vicuna")
    hf_model = _hf_vicuna(hf_dir, image_token)

    results = evaluate.run(config, str(tmp_path / "run"), hf_dir)
    assert results["demo_vqa"]["num_examples"] > 0
    path = os.path.join(str(tmp_path / "run"), "eval", "predictions", "demo_vqa", "hf_vicuna.jsonl")
    with open(path) as f:
        ours = {row["id"]: row["prediction"] for row in map(json.loads, f)}

    (settings,) = evaluations(config)
    expected = {}
    for batch in eval_pipeline.build_eval_dataset(
        config.data, "demo_vqa", "eval", prompt=settings.prompt
    ):
        tokens = _hf_generate(
            hf_model, batch, image_token, settings, tokenizer.pad_id, tokenizer.eos_id
        )
        texts = decode.decode_text(tokens, tokenizer, tokenizer.eos_id)
        for row, text in enumerate(texts):
            if batch["valid"][row]:
                expected[batch["meta"]["id"][row]] = text
    assert set(ours) == set(expected) and len(expected) == results["demo_vqa"]["num_examples"]
    assert ours == expected
    assert len(set(expected.values())) > 3  # not one degenerate output everywhere


def test_every_lm_family_names_its_conversion_tables():
    import importlib

    from ib_jax.models import families

    for family in families.FAMILIES.values():
        tables = importlib.import_module(family.conversion)
        for name in ("HF_RULES", "LAVIS_RULES"):
            assert getattr(tables, name), f"{family.conversion}.{name}"
        for name in ("HF_ALIASES", "HF_UNUSED", "LAVIS_ALIASES", "LAVIS_UNUSED"):
            assert isinstance(getattr(tables, name), (dict, list)), f"{family.conversion}.{name}"
        assert tables.LAVIS_PREFIX.endswith(".") and isinstance(tables.TIE_HEADLESS, bool)


@pytest.mark.reference
def test_conversion_takes_the_tokenizer_ids_and_names_both_files(tmp_path, caplog):
    """config.json (bos 1, eos 2, pad 0) vs the tokenizer saved as LAVIS configures it (`</s>` as
    BOS, [PAD] added): the converted model gets the tokenizer's ids, as HF's own tokenizer loads
    them, with one message naming both files and both values."""
    import dataclasses
    import logging

    import sentencepiece
    import transformers

    from ib_jax.convert import api, tokenizer_ids
    from tests import reference

    spm_dir = tmp_path / "spm"
    spm_dir.mkdir()
    (spm_dir / "corpus.txt").write_text("\n".join(demo_data.demo_corpus() * 3))
    sentencepiece.SentencePieceTrainer.Train(
        input=str(spm_dir / "corpus.txt"),
        model_prefix=str(spm_dir / "tokenizer"),
        vocab_size=400,
        model_type="bpe",
        character_coverage=1.0,
        byte_fallback=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    tok = transformers.LlamaTokenizer.from_pretrained(str(spm_dir))
    for name, piece in (("pad", "[PAD]"), ("bos", "</s>"), ("eos", "</s>"), ("unk", "</s>")):
        tok.add_special_tokens({f"{name}_token": piece})
    hf_dir = str(tmp_path / "hf")
    reference.build(
        "llama", seed=0, bos_token_id=1, eos_token_id=2, pad_token_id=0
    ).save_pretrained(hf_dir)
    tok.save_pretrained(hf_dir)
    loaded = transformers.AutoTokenizer.from_pretrained(hf_dir)
    want = (loaded.bos_token_id, loaded.eos_token_id, loaded.pad_token_id)
    assert want[:2] == (2, 2) and want[2] not in (0, None)

    with caplog.at_level(logging.WARNING, logger="ib_jax.convert.api"):
        text = api.plan_hf(hf_dir).config.text
    assert (text.bos_token_id, text.eos_token_id, text.pad_token_id) == want
    messages = [r.getMessage() for r in caplog.records if "special-token ids" in r.getMessage()]
    assert len(messages) == 1, messages
    for part in (
        "config.json text_config.bos_token_id is 1",
        "tokenizer_config.json names bos_token '</s>', id 2",
        "config.json text_config.pad_token_id is 0",
        f"pad_token '[PAD]', id {want[2]}",
        "`[PAD]` = 32000",
    ):
        assert part in messages[0], (part, messages[0])
    assert "eos_token_id" not in messages[0]  # eos agrees
    agreeing = dataclasses.replace(text, bos_token_id=2, eos_token_id=2, pad_token_id=want[2])
    assert tokenizer_ids.reconcile(hf_dir, agreeing) == (agreeing, None)


@pytest.mark.parametrize(
    "lm, train_config",
    [
        ("vicuna", "instructblip_vicuna7b"),
        ("vicuna13b", "instructblip_vicuna13b"),
        (None, "instructblip_flant5xl"),
    ],
)
def test_heldout_config_evaluates_the_training_configs_model(lm, train_config):
    """configs/eval_heldout.py:lm=...,model=1 has the model its training config trains (the eval
    job refuses a checkpoint whose architecture differs), that model's tokenizer and text layout."""
    from ib_jax.contract.model import from_config_dict
    from ib_jax.eval import loading

    arg = "root=/data,model=1" + (f",lm={lm}" if lm else "")
    config = load_config(os.path.join(REPO, f"configs/eval_heldout.py:{arg}"))
    trained = load_config(os.path.join(REPO, f"configs/{train_config}.py"))
    assert loading._architecture(from_config_dict(config.model)) == loading._architecture(
        from_config_dict(trained.model)
    )
    # (the data default is t5: data_pipelines/preprocess.py)
    assert config.data.lm_type == trained.data.get("lm_type", "t5") == config.model.lm_type
    assert config.data.lm_spm.startswith("/data/tokenizers/")
    if lm:
        assert os.path.basename(config.data.lm_spm) == os.path.basename(trained.data.lm_spm)
        assert (config.data.text_max_len, config.data.target_max_len) == (
            trained.data.text_max_len,
            trained.data.target_max_len,
        )
    assert len(config.evals) == 13
    with pytest.raises(ValueError, match="lm='gpt'"):
        load_config(os.path.join(REPO, "configs/eval_heldout.py:lm=gpt"))
