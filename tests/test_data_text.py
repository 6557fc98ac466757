"""Tokenizer ids equal HF's BertTokenizerFast / T5Tokenizer built from the same local files."""

import numpy as np
import pytest
import sentencepiece as spm

from data_pipelines import demo_data, text
from ib_jax.contract.text import text_format

transformers = pytest.importorskip("transformers")

TEXTS = [
    "Question: what color is the circle? Short answer:",
    "OCR tokens: STOP Main St. Given the image, answer the following question with no more "
    "than three words. What does the red sign say?",
    "A short image caption:",
    "Zebra ÉLAN naïve café, 42!",
    "",
]


@pytest.fixture(scope="module")
def bert_vocab(tmp_path_factory):
    """A tiny BERT-style vocab (real BERT layout: [PAD]=0, [UNK]=100...) without [DEC]."""
    words = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words += list("abcdefghijklmnopqrstuvwxyz0123456789.,:?!'\"") + [
        "##" + c for c in "abcdefghijklmnopqrstuvwxyz"
    ]
    words += [
        "question",
        "what",
        "color",
        "is",
        "the",
        "circle",
        "short",
        "answer",
        "image",
        "sign",
        "red",
        "say",
        "does",
        "##s",
        "##ing",
        "st",
        "main",
        "stop",
        "given",
        "three",
        "words",
    ]
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(words) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory):
    """A small SentencePiece model trained in-process with T5 conventions."""
    directory = tmp_path_factory.mktemp("spm")
    corpus = directory / "corpus.txt"
    corpus.write_text("\n".join(demo_data.demo_corpus() * 3 + TEXTS))
    spm.SentencePieceTrainer.Train(
        input=str(corpus),
        model_prefix=str(directory / "spiece"),
        vocab_size=300,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        character_coverage=1.0,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    return str(directory / "spiece.model")


@pytest.mark.parametrize("vocab_kind", ["bert_layout", "demo"])
@pytest.mark.parametrize("max_len", [8, 32])
def test_qformer_ids_equal_hf(bert_vocab, vocab_kind, max_len):
    vocab = bert_vocab if vocab_kind == "bert_layout" else demo_data.DEMO_VOCAB
    ours = text.QFormerTokenizer(vocab)
    hf = transformers.BertTokenizerFast(vocab=vocab, do_lower_case=True, truncation_side="left")
    hf.add_special_tokens({"bos_token": "[DEC]"})
    ids, mask = ours.encode(TEXTS, max_len)
    reference = hf(
        TEXTS, max_length=max_len, truncation=True, padding="max_length", return_tensors="np"
    )
    np.testing.assert_array_equal(ids, reference["input_ids"])
    np.testing.assert_array_equal(mask, reference["attention_mask"])
    assert ids.dtype == np.int32 and ids.shape == (len(TEXTS), max_len)
    assert ours.vocab_size == len(hf)  # [DEC] added exactly when the vocab lacks it
    if max_len == 8:  # left truncation keeps [CLS] and the END of the text
        assert (ids[1, 0], ids[1, -1]) == (hf.cls_token_id, hf.sep_token_id)
        assert hf.decode(ids[1, 1:-1]).endswith("say?".replace("?", " ?")) or "say" in hf.decode(
            ids[1]
        )


@pytest.mark.parametrize("model_kind", ["trained_here", "demo"])
@pytest.mark.parametrize("max_len", [6, 40])
def test_lm_instruction_and_target_equal_hf_t5(spm_model, model_kind, max_len, tmp_path):
    model = spm_model if model_kind == "trained_here" else demo_data.DEMO_SPM
    (tmp_path / "spiece.model").write_bytes(open(model, "rb").read())
    ours = text.LMTokenizer(model)
    left = transformers.T5Tokenizer.from_pretrained(str(tmp_path), truncation_side="left")
    right = transformers.T5Tokenizer.from_pretrained(str(tmp_path), truncation_side="right")
    for sentence in TEXTS:
        ids, mask = ours.encode_instruction(sentence, max_len)
        reference = left(sentence, max_length=max_len, truncation=True, padding="max_length")
        assert (
            ids.tolist() == reference["input_ids"] and mask.tolist() == reference["attention_mask"]
        )
        assert ids[mask.sum() - 1] == 1  # ends with </s>
        labels = ours.encode_target(sentence, max_len)
        reference = right(sentence, max_length=max_len, truncation=True)["input_ids"]
        assert labels.tolist() == reference + [-100] * (max_len - len(reference))


def test_bad_tokenizer_files_name_the_path(tmp_path):
    with pytest.raises(ValueError, match="nope.txt"):
        text.QFormerTokenizer(str(tmp_path / "nope.txt"))
    with pytest.raises(ValueError, match="nope.model"):
        text.LMTokenizer(str(tmp_path / "nope.model"))


def test_demo_assets_regenerate_identically(tmp_path):
    paths = demo_data.build_tokenizer_assets(str(tmp_path))
    assert open(paths["qformer_vocab"]).read() == open(demo_data.DEMO_VOCAB).read()
    fresh, committed = text.LMTokenizer(paths["lm_spm"]), text.LMTokenizer(demo_data.DEMO_SPM)
    for sentence in TEXTS + demo_data.demo_corpus():
        assert fresh.ids(sentence) == committed.ids(sentence)
    vocab = open(demo_data.DEMO_VOCAB).read().split("\n")
    assert vocab[:6] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
    assert committed.vocab_size <= 400


@pytest.fixture(scope="module")
def llama_spm_dir(tmp_path_factory):
    """A tiny SentencePiece BPE model trained in-process with LLaMA's trainer settings (unk 0,
    bos 1, eos 2, no pad piece, byte fallback, identity normalization), as `tokenizer.model`."""
    directory = tmp_path_factory.mktemp("llama_spm")
    corpus = directory / "corpus.txt"
    corpus.write_text("\n".join(demo_data.demo_corpus() * 3 + TEXTS))
    spm.SentencePieceTrainer.Train(
        input=str(corpus),
        model_prefix=str(directory / "tokenizer"),
        vocab_size=400,
        model_type="bpe",
        byte_fallback=True,
        split_digits=True,
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        allow_whitespace_only_pieces=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        character_coverage=1.0,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    return directory


def _lavis_llama_tokenizer(directory, truncation_side: str):
    """HF `LlamaTokenizer` configured as LAVIS's blip2_vicuna_instruct does it."""
    tok = transformers.LlamaTokenizer.from_pretrained(
        str(directory), add_bos_token=True, truncation_side=truncation_side, padding_side="right"
    )
    for name, piece in (("pad", "[PAD]"), ("bos", "</s>"), ("eos", "</s>"), ("unk", "</s>")):
        tok.add_special_tokens({f"{name}_token": piece})
    tok.update_post_processor()  # transformers 5: the template must pick up the new BOS
    return tok


# Texts without leading whitespace: for those, `tokenizers`' Metaspace (HF 5) does not add the
# dummy prefix that SentencePiece (and the slow tokenizer LAVIS trained with) adds.
VICUNA_TEXTS = TEXTS + ["two  spaces\tand tab\nnewline 12345 ☃"]


@pytest.mark.parametrize("max_len", [6, 40])
def test_vicuna_layout_equals_hf_llama_tokenizer_as_lavis_uses_it(llama_spm_dir, max_len):
    ours = text.LMTokenizer(str(llama_spm_dir / "tokenizer.model"), text_format("llama"))
    left = _lavis_llama_tokenizer(llama_spm_dir, "left")
    right = _lavis_llama_tokenizer(llama_spm_dir, "right")
    assert (ours.pad_id, ours.vocab_size) == (left.pad_token_id, len(left)) == (400, 401)
    assert ours.bos_id == ours.eos_id == left.bos_token_id == left.eos_token_id == 2
    for sentence in VICUNA_TEXTS:
        # LAVIS forward(): instruction with BOS, no EOS, left-truncated at max_txt_len.
        ids, mask = ours.encode_instruction(sentence, max_len)
        reference = left(sentence, max_length=max_len, truncation=True, padding="max_length")
        assert ids.tolist() == reference["input_ids"], sentence
        assert mask.tolist() == reference["attention_mask"]
        assert ids[0] == 2 and (mask.sum() < 2 or ids[mask.sum() - 1] != 2)
        # Target: text + "</s>" right-truncated, its BOS dropped by concat_text_input_output.
        labels = ours.encode_target(sentence, max_len)
        reference = right(sentence + "</s>", max_length=max_len + 1, truncation=True)
        expected = reference["input_ids"][1:]
        assert labels.tolist() == expected + [-100] * (max_len - len(expected)), sentence
        # _predict_class(): candidates tokenized as they are, BOS dropped, no EOS.
        candidate = ours.encode_candidate(sentence, max_len)
        expected = right(sentence, max_length=max_len + 1, truncation=True)["input_ids"][1:]
        assert candidate.tolist() == expected + [-100] * (max_len - len(expected))
        assert ours.decode(ids) == left.decode(ids, skip_special_tokens=True)


def test_t5_layout_is_unchanged_by_the_format_choice(spm_model):
    default, t5 = text.LMTokenizer(spm_model), text.LMTokenizer(spm_model, text_format("t5"))
    for sentence in TEXTS:
        assert default.encode_instruction(sentence, 12)[0].tolist() == (
            t5.encode_instruction(sentence, 12)[0].tolist()
        )
        np.testing.assert_array_equal(
            t5.encode_candidate(sentence, 6), t5.encode_target(sentence, 6)
        )


def test_tokenizer_and_model_ids_must_agree(llama_spm_dir):
    from ib_jax.contract.model import LlamaConfig, T5Config

    path = str(llama_spm_dir / "tokenizer.model")
    with pytest.raises(ValueError, match="no pad piece"):
        text.LMTokenizer(path)  # T5's format needs the model's own pad piece; LLaMA's has none
    ours = text.LMTokenizer(path, text_format("llama"))
    ours.check_model(LlamaConfig(vocab_size=401, bos_token_id=2, eos_token_id=2, pad_token_id=400))
    with pytest.raises(ValueError, match="pad_token_id is 32000"):
        ours.check_model(LlamaConfig(vocab_size=32001))
    with pytest.raises(ValueError, match="vocab_size 300"):
        ours.check_model(LlamaConfig(vocab_size=300, pad_token_id=400))
    with pytest.raises(ValueError, match="eos_token_id is 1"):
        ours.check_model(T5Config(pad_token_id=400))
