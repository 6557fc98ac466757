"""Metrics against hand-computed values and the official VQA script's normalization behaviour."""

import shutil

import numpy as np
import pytest

from ib_jax.eval import metrics

# --- VQA normalization: expected outputs follow the official vqaEval.py rules step by step. ----


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Two dogs.", "2 dogs"),  # period stripped, number word -> digit
        ("The Cat", "cat"),  # lowercase, article dropped
        ("a dog", "dog"),
        ("3.5", "3.5"),  # a period before a digit is kept
        ("1,000", "1000"),  # digit,digit: punctuation removed, not spaced
        ("red, white", "red white"),  # "p " present: removed
        ("red,white", "red white"),  # otherwise replaced by a space
        ("it's", "it s"),  # apostrophe spaced out (official quirk)
        ("dont", "don’t"),  # contractions table (U+2019 as in the official table)
        ("yes!", "yes!"),  # '!' is not in the official punctuation list
        ("hot-dog", "hot-dog"),  # neither is '-'
        ("  none\n", "0"),  # whitespace stripped; 'none' maps to 0
    ],
)
def test_normalize_vqa_answer(raw, expected):
    assert metrics.normalize_vqa_answer(raw) == expected


def test_vqa_accuracy_leave_one_out():
    refs = ["2"] * 3 + ["3"] * 7
    result = metrics.compute("vqa_accuracy", ["two", "3", "cat"], [refs, refs, refs])
    # "two" -> "2": 3 of 10 leave-one-out subsets keep 2 matches (2/3), 7 keep 3 (1.0).
    assert result["per_example"] == pytest.approx([0.9, 1.0, 0.0])
    assert result["score"] == pytest.approx(1.9 / 3)


def test_vqa_accuracy_single_match_and_unanimous():
    one_match = ["blue"] + ["green"] * 9
    unanimous = ["yes"] * 10
    result = metrics.compute("vqa_accuracy", ["Blue", "Yes."], [one_match, unanimous])
    # One matching human: the 9 subsets that keep it score 1/3 -> 0.3.
    assert result["per_example"] == pytest.approx([0.3, 1.0])


def test_vqa_accuracy_refs_punctuation_only_when_humans_disagree():
    # Disagreeing refs get punctuation processing ("t,shirt" -> "t shirt"): a match.
    disagree = ["t,shirt"] * 9 + ["shirt"]
    # Unanimous refs are compared raw: "t,shirt" never equals the normalized "t shirt".
    unanimous = ["t,shirt"] * 10
    result = metrics.compute("vqa_accuracy", ["t shirt", "t shirt"], [disagree, unanimous])
    assert result["per_example"] == pytest.approx([1.0, 0.0])


def test_ivqa_accuracy():
    refs = ["dog", "dog", "cat", "puppy", "dog"]
    result = metrics.compute("ivqa_accuracy", ["Dog", "cat", "bird"], [refs] * 3)
    assert result["per_example"] == pytest.approx([1.0, 0.5, 0.0])
    assert result["score"] == pytest.approx(0.5)


def test_exact_match_and_accuracy():
    em = metrics.compute(
        "exact_match", ["The table.", "chair", "left"], ["table", "sofa", ["left"]]
    )
    assert em["per_example"] == [1.0, 0.0, 1.0]
    acc = metrics.compute("accuracy", [2, 0, "True ", 1], [2, 1, "true", True])
    assert acc["per_example"] == [1.0, 0.0, 1.0, 1.0]
    assert acc["score"] == pytest.approx(0.75)


def test_auc_matches_hand_count():
    # Positive/negative pairs ranked correctly: (0.35>0.1), (0.8>0.1), (0.8>0.4) = 3 of 4.
    result = metrics.compute("auc", [0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    assert result["score"] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="single class"):
        metrics.compute("auc", [0.1, 0.2], [1, 1])


def test_mrr_ranks_and_ties():
    scores = [
        [0.1, 0.9, 0.5, 0.0],  # gt 2 is second best -> rank 2
        [0.3, 0.3, 0.3, 0.3],  # all tied: the official sort gives distinct ranks; gt 3 -> rank 4
        [0.0, 0.2, 0.1, 0.7],  # gt 3 is best -> rank 1
    ]
    result = metrics.compute("mrr", scores, [2, 3, 3])
    assert result["per_example"] == pytest.approx([0.5, 0.25, 1.0])
    assert result["score"] == pytest.approx(1.75 / 3)
    assert result["recall@1"] == pytest.approx(1 / 3)
    assert result["mean_rank"] == pytest.approx(7 / 3)
    ranks = metrics.scores_to_ranks(np.asarray(scores))
    assert sorted(ranks[1].tolist()) == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="gt_index 4"):
        metrics.compute("mrr", [[0.1, 0.2, 0.3, 0.4]], [4])


@pytest.mark.skipif(shutil.which("java") is None, reason="pycocoevalcap's PTB tokenizer needs java")
def test_cider_hand_computed_corpus():
    # Two images, one reference each. IDF over N=2 images gives every ref n-gram weight log 2.
    # Image 0: "cat fish" vs "cat dog": unigram cosine 1/2, no shared bigram, no 3/4-grams
    #   -> 10 * (0.5 + 0 + 0 + 0) / 4 = 1.25.
    # Image 1: identical -> unigram and bigram cosine 1 -> 10 * 2 / 4 = 5.0.
    # Equal lengths, so CIDEr-D's length penalty is exp(0) = 1. PTB lowercases and drops '.'.
    result = metrics.compute("cider", ["Cat fish.", "bird fish"], [["cat dog"], ["Bird fish"]])
    assert result["per_example"] == pytest.approx([1.25, 5.0])
    assert result["score"] == pytest.approx(3.125)


def test_errors_name_the_problem():
    with pytest.raises(KeyError, match="unknown metric 'bleu'.*vqa_accuracy"):
        metrics.compute("bleu", ["a"], ["a"])
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        metrics.compute("accuracy", [1, 2], [1])
    with pytest.raises(ValueError, match="example 0 has no reference answers"):
        metrics.compute("vqa_accuracy", ["a"], [[]])


def test_cider_without_java_raises_clear_error(monkeypatch):
    monkeypatch.setattr(metrics.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="needs a `java` executable"):
        metrics.compute("cider", ["a cat"], [["a cat"]])


def test_registry_names():
    assert set(metrics.METRICS) == {
        "vqa_accuracy",
        "cider",
        "exact_match",
        "accuracy",
        "auc",
        "mrr",
        "ivqa_accuracy",
    }
