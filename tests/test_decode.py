"""Generation against Hugging Face `generate` on a tiny re-randomized InstructBLIP-T5, token for token.

HF's T5 output starts with the decoder start token and, for beam search, fills after EOS with its
own filler; ours is the new tokens only with pad after EOS, so HF rows are normalised to that.
EOS is set to a token the tiny model actually emits (2), so rows finish at different steps.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import ib_jax
from ib_jax import decode
from ib_jax.contract.batch import MODEL_INPUTS
from tests import reference

# Needs the PyTorch reference (torch + transformers): the reference CI lane only.
pytestmark = pytest.mark.reference

EOS, PAD, MAX_NEW = 2, 0, 8


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    hf_model = reference.build("t5", seed=0)
    directory = tmp_path_factory.mktemp("hf_t5_decode")
    hf_model.save_pretrained(directory)
    model, params = ib_jax.load_pretrained(str(directory))
    batch = reference.inputs(seed=1, batch=3)  # rows 1, 2 padded in every mask
    batch.pop("labels")
    return hf_model, model, params, batch


def _hf_generate(hf_model, batch, **kwargs) -> np.ndarray:
    with torch.no_grad():
        out = hf_model.generate(
            **reference.to_hf(batch),
            max_new_tokens=MAX_NEW,
            eos_token_id=EOS,
            pad_token_id=PAD,
            **kwargs,
        ).numpy()[:, 1:]  # drop the decoder start token
    normalised = np.full((out.shape[0], MAX_NEW), PAD, np.int64)
    for row, tokens in enumerate(out):
        end = np.flatnonzero(tokens == EOS)
        tokens = tokens[: end[0] + 1] if end.size else tokens
        normalised[row, : len(tokens)] = tokens
    return normalised


def _ours(model, params, batch, **kwargs) -> np.ndarray:
    return np.asarray(
        decode.generate(
            model,
            params,
            batch,
            max_new_tokens=MAX_NEW,
            eos_token_id=EOS,
            pad_token_id=PAD,
            **kwargs,
        )
    )


CASES = {
    "greedy": dict(),
    "greedy_repetition_penalty": dict(repetition_penalty=1.5),
    "greedy_min_new_tokens": dict(min_new_tokens=4),
    "beam3_lp-1": dict(num_beams=3, length_penalty=-1.0),
    "beam3_lp1_min3": dict(num_beams=3, length_penalty=1.0, min_new_tokens=3),
    "beam3_lp2_repetition_penalty": dict(num_beams=3, length_penalty=2.0, repetition_penalty=1.3),
}


@pytest.mark.parametrize("case", list(CASES))
def test_generation_matches_hf(setup, case):
    hf_model, model, params, batch = setup
    kwargs = CASES[case]
    expected = _hf_generate(hf_model, batch, **kwargs)
    got = _ours(model, params, batch, **kwargs)
    np.testing.assert_array_equal(got, expected)
    if case in ("greedy", "beam3_lp-1"):  # the cases exercise EOS: some row ends before the limit
        assert (got == EOS).any()


def test_outputs_differ_between_settings(setup):
    """The settings are honoured (guards against a knob that is silently ignored)."""
    _, model, params, batch = setup
    base = _ours(model, params, batch)
    assert not np.array_equal(base, _ours(model, params, batch, repetition_penalty=1.5))
    assert not np.array_equal(base, _ours(model, params, batch, min_new_tokens=4))


def test_top_p_sampling_is_deterministic_and_stays_in_nucleus(setup):
    _, model, params, batch = setup
    rng = jax.random.key(3)
    first = _ours(model, params, batch, do_sample=True, top_p=0.5, rng=rng)
    again = _ours(model, params, batch, do_sample=True, top_p=0.5, rng=rng)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(
        first, _ours(model, params, batch, do_sample=True, top_p=0.5, rng=jax.random.key(4))
    )
    # Teacher-force the sampled prefix and check each sampled token lies in HF's top-p nucleus.
    hf_model, *_ = setup
    with torch.no_grad():
        start = np.zeros((first.shape[0], 1), np.int64)
        logits = hf_model(
            **reference.to_hf(batch),
            decoder_input_ids=torch.from_numpy(np.concatenate([start, first[:, :-1]], 1)),
        ).logits.numpy()
    from transformers.generation.logits_process import TopPLogitsWarper

    warper = TopPLogitsWarper(top_p=0.5)
    for t in range(MAX_NEW):
        kept = np.isfinite(warper(None, torch.from_numpy(logits[:, t])).numpy())
        for row in range(first.shape[0]):
            if t == 0 or (first[row, :t] != EOS).all():
                assert kept[row, first[row, t]], (row, t)


def test_top_p_filter_matches_hf_warper():
    from transformers.generation.logits_process import TopPLogitsWarper

    logits = np.random.default_rng(0).normal(size=(4, 50)).astype(np.float32) * 3
    for top_p in (0.1, 0.5, 0.9):
        expected = TopPLogitsWarper(top_p=top_p)(None, torch.from_numpy(logits)).numpy()
        got = np.asarray(decode.top_p_filter(jnp.asarray(logits), top_p))
        np.testing.assert_array_equal(np.isfinite(got), np.isfinite(expected))


def test_temperature_to_zero_is_greedy(setup):
    _, model, params, batch = setup
    greedy = _ours(model, params, batch)
    cold = _ours(model, params, batch, do_sample=True, temperature=1e-4, rng=jax.random.key(0))
    np.testing.assert_array_equal(cold, greedy)


@pytest.fixture(scope="module")
def llama_setup(tmp_path_factory):
    hf_model = reference.build("llama", seed=0)
    directory = tmp_path_factory.mktemp("hf_llama_decode")
    hf_model.save_pretrained(directory)
    model, params = ib_jax.load_pretrained(str(directory))
    batch = reference.inputs(seed=1, batch=2)
    batch.pop("labels")
    return hf_model, model, params, batch


@pytest.mark.parametrize(
    "kwargs",
    [dict(), dict(num_beams=3, length_penalty=-1.0, min_new_tokens=2)],
    ids=["greedy", "beam3"],
)
def test_vicuna_generation_matches_hf(llama_setup, kwargs):
    """HF decoder-only generation needs left padding; ours takes either side (pads sorted first)."""
    hf_model, model, params, batch = llama_setup
    hf_inputs = reference.to_hf(batch)
    ids, mask = hf_inputs["input_ids"].numpy(), hf_inputs["attention_mask"].numpy()
    for row in range(len(ids)):
        order = np.argsort(mask[row], kind="stable")  # pads first, token order kept
        ids[row], mask[row] = ids[row][order], mask[row][order]
    hf_inputs.update(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
    with torch.no_grad():
        expected = hf_model.generate(
            **hf_inputs, max_new_tokens=6, eos_token_id=EOS, pad_token_id=PAD, **kwargs
        ).numpy()[:, ids.shape[1] :]
    got = np.asarray(
        decode.generate(
            model, params, batch, max_new_tokens=6, eos_token_id=EOS, pad_token_id=PAD, **kwargs
        )
    )
    assert (expected != EOS).all()  # no EOS in this draw, so no filler normalisation is needed
    np.testing.assert_array_equal(got, expected)


def _transposes_in_decode_loop(model, params, batch, num_beams: int) -> list[str]:
    """The shapes of the transposes XLA runs inside the compiled decode loop (its while bodies
    and every computation they call)."""
    settings = decode.DecodeSettings(
        max_new_tokens=MAX_NEW, eos_token_id=EOS, pad_token_id=PAD, num_beams=num_beams
    )
    inputs = {k: jnp.asarray(batch[k]) for k in MODEL_INPUTS if batch.get(k) is not None}
    lowered = decode.compiled_generate(model, settings).lower(
        params, inputs, decode.make_knobs(MAX_NEW), jax.random.key(0)
    )
    text = lowered.compile().as_text()
    computations = {}
    for block in re.split(r"\n(?=\S)", text):
        name = re.match(r"(?:ENTRY )?%?([\w.\-]+)", block)
        if name:
            computations[name.group(1)] = block
    called = r"(?:calls|body|condition|to_apply|branch_computations)=\{?%?([\w.\-]+)"
    pending, in_loop = re.findall(r"body=%?([\w.\-]+)", text), set()
    assert pending, "no decode loop found in the compiled program"
    while pending:
        name = pending.pop()
        if name not in in_loop and name in computations:
            in_loop.add(name)
            pending += re.findall(called, computations[name])
    return [
        shape
        for name in in_loop
        for shape in re.findall(r"= (\S+) transpose\(", computations[name])
    ]


@pytest.mark.parametrize("lm", ["t5", "llama"])
@pytest.mark.parametrize("num_beams", [1, 3])
def test_decode_steps_read_the_caches_without_transposing_them(request, lm, num_beams):
    """The self-attention caches and T5's projected encoder K/V are kept heads-first, the layout
    the attention contracts over: kept as [B, L, H, Dh], XLA transposed every one of them whole at
    every step (24% of a T5 beam step at the benchmark size, benchmarks/EVAL_RESULTS.md). What
    may stay is T5's per-step position bias row ([H, 1, L])."""
    _, model, params, batch = request.getfixturevalue("setup" if lm == "t5" else "llama_setup")
    shapes = _transposes_in_decode_loop(model, params, batch, num_beams)
    ranks = {shape: len(re.search(r"\[([\d,]*)\]", shape).group(1).split(",")) for shape in shapes}
    assert [shape for shape, rank in ranks.items() if rank >= 4] == []  # none cache-shaped
