"""Tokenizer ids equal HF's BertTokenizerFast / T5Tokenizer built from the same local files."""

import numpy as np
import pytest
import sentencepiece as spm

from data_pipelines import demo_data, text

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
