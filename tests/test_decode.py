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


# ---------------------------------------------------------------------------------------------
# The evaluation protocol's settings (docs/PROTOCOL.md): LAVIS's repetition penalty 1.5 with beam
# search, its length penalties (T5 -1, Vicuna 0, captions 1) and its min_length, whose count HF
# starts at the T5 decoder start token.
# ---------------------------------------------------------------------------------------------


def _until_eos(tokens: np.ndarray, width: int) -> np.ndarray:
    """HF rows -> ours: cut after the first EOS, PAD after it, `width` columns."""
    out = np.full((tokens.shape[0], width), PAD, np.int64)
    for row, ids in enumerate(tokens):
        end = np.flatnonzero(ids == EOS)
        ids = ids[: end[0] + 1] if end.size else ids
        out[row, : len(ids)] = ids[:width]
    return out


PROTOCOL_CASES = {
    "beam3_rp1.5_lp-1": dict(num_beams=3, repetition_penalty=1.5, length_penalty=-1.0),
    "beam3_rp1.5_lp0": dict(num_beams=3, repetition_penalty=1.5, length_penalty=0.0),
    "beam3_rp1.5_lp1": dict(num_beams=3, repetition_penalty=1.5, length_penalty=1.0),
    "greedy_rp1.5": dict(repetition_penalty=1.5),
}


@pytest.mark.parametrize("case", list(PROTOCOL_CASES))
def test_t5_protocol_settings_match_hf(setup, case):
    hf_model, model, params, batch = setup
    kwargs = PROTOCOL_CASES[case]
    np.testing.assert_array_equal(
        _ours(model, params, batch, **kwargs), _hf_generate(hf_model, batch, **kwargs)
    )


@pytest.mark.parametrize("min_length", [1, 5])
def test_t5_min_length_counts_the_decoder_start_token(setup, min_length):
    """LAVIS passes `min_length` (captions 10, answers 1) to HF, which counts the T5 decoder's
    start token: `lavis_lengths` turns it into the new tokens `generate` here counts."""
    hf_model, model, params, batch = setup
    kwargs = dict(num_beams=3, repetition_penalty=1.5, length_penalty=1.0)
    max_new, min_new = decode.lavis_lengths(MAX_NEW, min_length, encoder_decoder=True)
    assert (max_new, min_new) == (MAX_NEW, min_length - 1)
    expected = _hf_generate(hf_model, batch, min_length=min_length, **kwargs)
    got = _ours(model, params, batch, min_new_tokens=min_new, **kwargs)
    np.testing.assert_array_equal(got, expected)
    if min_length > 1:  # the minimum binds: some row would end sooner without it
        free = _ours(model, params, batch, **kwargs)
        ends = [np.flatnonzero(row == EOS)[0] for row in free if (row == EOS).any()]
        assert ends and min(ends) < min_new - 1


def _llama_left_padded(batch):
    """HF decoder-only generation needs left padding; ours takes either side (pads sorted first)."""
    hf_inputs = reference.to_hf(batch)
    ids, mask = hf_inputs["input_ids"].numpy(), hf_inputs["attention_mask"].numpy()
    for row in range(len(ids)):
        order = np.argsort(mask[row], kind="stable")  # pads first, token order kept
        ids[row], mask[row] = ids[row][order], mask[row][order]
    hf_inputs.update(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
    return hf_inputs


def _hf_llama_from_embeds(hf_model, hf_inputs, width: int, **kwargs) -> np.ndarray:
    """The LLaMA LM generating from `inputs_embeds` alone, as LAVIS's `blip2_vicuna_instruct`
    calls it: `input_ids` hold no prompt, so the repetition penalty sees only generated tokens.
    The embeddings are built as HF's `InstructBlipForConditionalGeneration.generate` builds them.
    One unpadded row at a time: HF 5 skips the first `left padding` positions of `input_ids` in
    the penalty, which without a prompt in `input_ids` are generated tokens."""
    rows = []
    with torch.no_grad():
        features = hf_model.get_image_features(
            hf_inputs["pixel_values"],
            qformer_input_ids=hf_inputs["qformer_input_ids"],
            qformer_attention_mask=hf_inputs["qformer_attention_mask"],
            return_dict=True,
        ).pooler_output
        ids = hf_inputs["input_ids"]
        embeds = hf_model.get_input_embeddings()(ids)
        placeholders = hf_model.get_placeholder_mask(ids, inputs_embeds=embeds)
        embeds = embeds.masked_scatter(placeholders, features.to(embeds.dtype))
        for row, mask in enumerate(hf_inputs["attention_mask"].bool()):
            out = hf_model.language_model.generate(
                inputs_embeds=embeds[row : row + 1, mask],
                attention_mask=torch.ones((1, int(mask.sum())), dtype=torch.long),
                eos_token_id=EOS,
                pad_token_id=PAD,
                **kwargs,
            )
            rows.append(_until_eos(out.numpy(), width)[0])
    return np.stack(rows)


LLAMA_PROTOCOL_CASES = {
    "beam3_rp1.5_lp0": dict(num_beams=3, repetition_penalty=1.5, length_penalty=0.0),
    "beam3_rp1.5_lp1_min3": dict(
        num_beams=3, repetition_penalty=1.5, length_penalty=1.0, min_new_tokens=3
    ),
    "greedy_rp1.5": dict(repetition_penalty=1.5),
}


@pytest.mark.parametrize("case", list(LLAMA_PROTOCOL_CASES))
def test_vicuna_protocol_settings_match_hf(llama_setup, case):
    """Both readings of the repetition penalty for a decoder-only LM, each against HF: the prompt
    counted (HF's InstructBLIP, prompt in `input_ids`) and not (LAVIS, `inputs_embeds` only);
    they differ here, so each test can tell them apart."""
    hf_model, model, params, batch = llama_setup
    kwargs = LLAMA_PROTOCOL_CASES[case]
    hf_inputs = _llama_left_padded(batch)
    prompt_len = hf_inputs["input_ids"].shape[1]
    with torch.no_grad():
        with_prompt = hf_model.generate(
            **hf_inputs, max_new_tokens=6, eos_token_id=EOS, pad_token_id=PAD, **kwargs
        ).numpy()[:, prompt_len:]
    without_prompt = _hf_llama_from_embeds(hf_model, hf_inputs, 6, max_new_tokens=6, **kwargs)
    ours = {
        flag: np.asarray(
            decode.generate(
                model,
                params,
                batch,
                max_new_tokens=6,
                eos_token_id=EOS,
                pad_token_id=PAD,
                penalize_prompt=flag,
                **kwargs,
            )
        )
        for flag in (True, False)
    }
    np.testing.assert_array_equal(ours[True], _until_eos(with_prompt, 6))
    np.testing.assert_array_equal(ours[False], without_prompt)
    assert not np.array_equal(ours[True], ours[False])
