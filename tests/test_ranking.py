"""Candidate scores against log-probabilities computed from HF logits for the same candidates."""

import numpy as np
import pytest
import torch

import ib_jax
from ib_jax.eval import ranking
from tests import reference

# Needs the PyTorch reference (torch + transformers): the reference CI lane only.
pytestmark = pytest.mark.reference


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    hf_model = reference.build("t5", seed=0)
    directory = tmp_path_factory.mktemp("hf_t5_rank")
    hf_model.save_pretrained(directory)
    model, params = ib_jax.load_pretrained(str(directory))
    batch = reference.inputs(seed=2, batch=2)
    batch.pop("labels")
    # [B=2, C=3, L=4]: candidates of different lengths ending in </s> (1); example 1 has only 2.
    labels = np.array(
        [
            [[5, 9, 1, -100], [7, 1, -100, -100], [11, 12, 13, 1]],
            [[20, 1, -100, -100], [21, 22, 23, 1], [-100] * 4],
        ],
        np.int32,
    )
    return hf_model, model, params, batch, labels


def _hf_log_probs(hf_model, batch, labels):
    """Sum and count of HF token log-probs, each candidate run as its own teacher-forced example."""
    num_b, num_c, _ = labels.shape
    total, count = np.full((num_b, num_c), -np.inf), np.zeros((num_b, num_c))
    for c in range(num_c):
        rows = [b for b in range(num_b) if (labels[b, c] != -100).any()]
        sub = {k: v[rows] for k, v in batch.items()}
        sub["labels"] = labels[rows, c]
        with torch.no_grad():
            logits = hf_model(**reference.to_hf(sub)).logits
        log_probs = torch.log_softmax(logits.double(), -1).numpy()
        for i, b in enumerate(rows):
            valid = labels[b, c] != -100
            picked = log_probs[i, np.arange(labels.shape[2]), np.where(valid, labels[b, c], 0)]
            total[b, c], count[b, c] = picked[valid].sum(), valid.sum()
    return total, count


@pytest.mark.parametrize("chunk_size", [0, 2], ids=["one_pass", "chunked"])
def test_scores_equal_hf_log_probs(setup, chunk_size):
    hf_model, model, params, batch, labels = setup
    total, count = _hf_log_probs(hf_model, batch, labels)
    got = np.asarray(ranking.score_candidates(model, params, batch, labels, chunk_size=chunk_size))
    np.testing.assert_allclose(got, total, rtol=1e-5, atol=1e-4)
    assert np.isneginf(got[1, 2])  # the missing candidate can never be chosen
    if chunk_size == 0:  # the length-normalised variant (one compile is enough)
        mean = np.asarray(
            ranking.score_candidates(model, params, batch, labels, length_normalize=True)
        )
        np.testing.assert_allclose(
            mean, np.where(count > 0, total / np.maximum(count, 1), -np.inf), rtol=1e-5, atol=1e-4
        )


def test_candidate_labels_from_strings():
    class Tok:  # ids = word lengths, as an LMTokenizer.encode_candidate would give ids + </s>
        def encode_candidate(self, text, max_len):
            ids = [len(w) + 2 for w in text.split()][: max_len - 1] + [1]
            return np.array(ids + [-100] * (max_len - len(ids)), np.int32)

    out = ranking.candidate_labels([["a bb", "ccc"], ["dddd"]], Tok(), max_len=4)
    assert out.shape == (2, 2, 4)
    np.testing.assert_array_equal(out[0, 0], [3, 4, 1, -100])
    np.testing.assert_array_equal(out[1, 1], [-100] * 4)


@pytest.fixture(scope="module")
def llama_setup(tmp_path_factory):
    hf_model = reference.build("llama", seed=0)
    directory = tmp_path_factory.mktemp("hf_llama_rank")
    hf_model.save_pretrained(directory)
    model, params = ib_jax.load_pretrained(str(directory))
    batch = reference.inputs(seed=2, batch=2)  # example 1's instruction is right-padded
    batch.pop("labels")
    # Vicuna candidates carry no `</s>` (LAVIS _predict_class); example 1 has only 2.
    labels = np.array(
        [
            [[5, 9, 30, -100], [7, -100, -100, -100], [11, 12, 13, 14]],
            [[20, -100, -100, -100], [21, 22, 23, 24], [-100] * 4],
        ],
        np.int32,
    )
    return hf_model, model, params, batch, labels


def test_vicuna_scores_equal_hf_log_probs(llama_setup):
    """Each candidate run through HF on its own as LAVIS lays it out: [queries][instruction]
    [candidate], its tokens' log-probs read one slot before each."""
    hf_model, model, params, batch, labels = llama_setup
    nq = reference.NUM_QUERY_TOKENS
    expected = np.full(labels.shape[:2], -np.inf)
    for b in range(labels.shape[0]):
        instruction = [
            int(t) for t, m in zip(batch["input_ids"][b], batch["attention_mask"][b]) if m
        ]
        for c in range(labels.shape[1]):
            candidate = [int(t) for t in labels[b, c] if t != -100]
            if not candidate:
                continue
            kwargs = reference.to_hf({k: v[b : b + 1] for k, v in batch.items()})
            ids = [reference.IMAGE_TOKEN] * nq + instruction + candidate
            kwargs["input_ids"] = torch.tensor([ids])
            kwargs["attention_mask"] = torch.ones_like(kwargs["input_ids"])
            with torch.no_grad():
                logits = hf_model(**kwargs).logits[0]
            log_probs = torch.log_softmax(logits.double(), -1).numpy()
            start = nq + len(instruction)
            expected[b, c] = sum(
                log_probs[start - 1 + j, token] for j, token in enumerate(candidate)
            )
    got = np.asarray(ranking.score_candidates(model, params, batch, labels, chunk_size=2))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
    assert np.isneginf(got[1, 2])
