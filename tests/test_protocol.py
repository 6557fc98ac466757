"""The paper's evaluation protocol (docs/PROTOCOL.md) against what the project declares and does.

docs/PROTOCOL.md ends with a JSON block: every held-out evaluation's mode, metric, prompt,
candidates and decoding per LM family. Every evaluation `configs/eval_heldout.py` declares, for
every `lm=`, must equal it, so the table and the configs cannot drift apart. The rest checks the
settings that are code, not config: LAVIS's length arithmetic, its OCR-token layout (in training
and evaluation alike), the caption templates training draws, the held-in lengths and the
VizWiz server file.
"""

import json
import pathlib
import re

import numpy as np
import pytest

from configs import data_heldin, eval_heldout, evals
from data_pipelines import eval_pipeline, registry, templates
from ib_jax import configs_util, decode
from ib_jax.contract.config import RunConfig
from ib_jax.eval import submission

PROTOCOL_MD = pathlib.Path(__file__).resolve().parents[1] / "docs" / "PROTOCOL.md"


@pytest.fixture(scope="module")
def protocol() -> dict:
    text = PROTOCOL_MD.read_text()
    match = re.search(r"<!-- protocol.json -->\s*```json\n(.*?)\n```", text, re.S)
    assert match, f"{PROTOCOL_MD}: no ```json block after <!-- protocol.json -->"
    return json.loads(match.group(1))


def _expected(protocol: dict, name: str, family: str) -> dict:
    """The declared fields docs/PROTOCOL.md fixes for evaluation `name` under LM `family`."""
    row = dict(protocol["evals"][name])
    decoding = row.pop("decoding", None)
    if decoding is not None:
        row.update(protocol["decodings"][decoding][family])
    if "candidates" in row:
        row["candidates"] = tuple(row["candidates"])
    return row


def test_the_table_covers_the_papers_held_out_suite(protocol):
    assert set(protocol["evals"]) == set(registry.held_out()) == set(eval_heldout.HELD_OUT)
    assert set(protocol["lm"]) <= set(eval_heldout.LMS)


@pytest.mark.parametrize("lm", ["flant5xl", "flant5xxl", "vicuna7b", "vicuna13b"])
def test_declared_evaluations_equal_the_protocol(protocol, lm):
    config = configs_util.load_config(f"configs/eval_heldout.py:root=/data,lm={lm}")
    family = protocol["lm"][lm]
    declared = {e.dataset: e for e in RunConfig.from_config(config).evals}
    assert set(declared) == set(protocol["evals"])
    # A server-scored split's local score carries its public split's name, never the paper's.
    for name, server in protocol["server_scored"].items():
        assert declared[name].name == server["local_name"]
    mismatches = []
    for name in sorted(declared):
        for field, value in _expected(protocol, name, family).items():
            got = getattr(declared[name], field)
            if got != value:
                mismatches.append(f"evals.{name}.{field}: declared {got!r}, protocol {value!r}")
    assert not mismatches, f"configs/eval_heldout.py lm={lm} vs docs/PROTOCOL.md:\n" + "\n".join(
        mismatches
    )
    for key, value in protocol["data"].items():
        assert config.data[key] == value, key


@pytest.mark.parametrize("family", ["t5", "llama"])
def test_lavis_lengths_give_the_declared_new_token_counts(protocol, family):
    """LAVIS's (max_len, min_len) -> the declared new-token counts, per HF's counting."""
    for name, decoding in protocol["decodings"].items():
        lavis, ours = decoding["lavis"], decoding[family]
        got = decode.lavis_lengths(
            lavis["max_len"], lavis["min_len"], encoder_decoder=family == "t5"
        )
        assert got == (ours["max_new_tokens"], ours["min_new_tokens"]), (name, family)


def test_lavis_lengths_count_the_start_token_and_the_bos_placeholder():
    # T5: max_new_tokens=max_length is passed as is; min_length counts the decoder start token.
    assert decode.lavis_lengths(10, 1, encoder_decoder=True) == (10, 0)
    assert decode.lavis_lengths(80, 10, encoder_decoder=True) == (80, 9)
    # Vicuna: max_length and min_length both count HF's [[bos]] placeholder.
    assert decode.lavis_lengths(10, 1, encoder_decoder=False) == (9, 0)
    assert decode.lavis_lengths(80, 10, encoder_decoder=False) == (79, 9)
    with pytest.raises(ValueError, match="max_len"):
        decode.lavis_lengths(0, 1, encoder_decoder=True)


# --- OCR tokens: LAVIS's first 30, ", "-joined, in evaluation and training alike ---------------


def _ocr_record(count: int) -> dict:
    return {
        "id": "t1",
        "question": "what brand is this?",
        "answers": ["coca cola"],
        "ocr_tokens": [f"tok{i}" for i in range(count)],
    }


def test_ocr_text_is_lavis_first_30_joined_with_commas(protocol):
    assert (templates.OCR_MAX_TOKENS, templates.OCR_SEPARATOR) == (
        protocol["ocr"]["max_tokens"],
        protocol["ocr"]["separator"],
    )
    tokens = [f"tok{i}" for i in range(40)]
    # LAVIS: ', '.join(samples['ocr_tokens'][i][:30])
    assert templates.ocr_text(tokens) == ", ".join(tokens[:30])
    assert templates.ocr_text(["STOP"]) == "STOP" and templates.ocr_text(None) == ""


def test_textvqa_zero_shot_prompt_shows_the_ocr_as_lavis(protocol):
    record = _ocr_record(40)
    prompt = protocol["evals"]["textvqa"]["prompt"]
    text = eval_pipeline.eval_instruction(prompt, registry.get("textvqa"), record)
    shown = ", ".join(f"tok{i}" for i in range(30))
    assert text == f"OCR tokens: {shown}. Question: what brand is this? Short answer:"
    assert "tok30" not in text


@pytest.mark.parametrize("name", ["textvqa", "textcaps"])
def test_training_instructions_show_the_ocr_as_the_evaluation(name):
    spec = registry.get(name)
    record = dict(_ocr_record(40), captions=["a can of soda."])
    instruction, _ = templates.make_instruction(
        record,
        spec.task_category,
        short_answer=spec.short_answer,
        ocr=spec.ocr,
        rng=np.random.default_rng(0),
    )
    assert instruction.startswith(f"OCR tokens: {templates.ocr_text(record['ocr_tokens'])}. ")
    assert "tok29" in instruction and "tok30" not in instruction


# --- training templates and lengths ------------------------------------------------------------


@pytest.mark.parametrize("name", ["coco_caption", "web_capfilt", "textcaps"])
def test_caption_datasets_draw_the_short_templates(name):
    """The paper writes "short"/"briefly" templates for datasets that favour short responses;
    captions do, so the NoCaps/Flickr30K prompt is among the training instructions."""
    spec = registry.get(name)
    drawn = {
        templates.make_instruction(
            {"captions": ["a dog on a couch."]},
            spec.task_category,
            short_answer=spec.short_answer,
            ocr=False,
            rng=templates.example_rng(0, name, i),
        )[0]
        for i in range(400)
    }
    assert drawn == set(templates.CAPTION_TEMPLATES)
    assert "A short image description:" in drawn


def test_long_answer_pools_keep_out_the_short_templates():
    pool = templates.template_pool("image_question_answering", short_answer=False)
    assert pool and not any(templates.is_short_template(t) for t in pool)


def test_held_in_lengths_and_mixture_are_lavis():
    config = data_heldin.get_config("root=/data")
    # LAVIS from_config: max_txt_len 128 (instruction, cut left), max_output_txt_len 256.
    assert (config.qformer_max_len, config.text_max_len, config.target_max_len) == (128, 128, 256)
    # The paper adjusts A-OKVQA and OK-VQA by factors no source publishes: neutral.
    assert data_heldin.MULTIPLIERS == {"okvqa": 1.0, "aokvqa": 1.0}


# --- VizWiz: the server's results file next to the local val score ----------------------------


def test_vizwiz_submission_file_is_the_servers_format(tmp_path, protocol):
    server = protocol["server_scored"]["vizwiz"]
    assert submission.LOCAL_NAMES["vizwiz"] == server["local_name"] == "vizwiz_val"
    assert evals.REPORTED_AS == submission.LOCAL_NAMES
    predictions = [
        {"id": "VizWiz_test_00020000", "prediction": "coffee mug", "nonfinite": False},
        {"id": "VizWiz_test_00020001.jpg", "prediction": None, "nonfinite": True},
    ]
    path = tmp_path / "eval" / "predictions" / "vizwiz_val" / "step_10.vizwiz_server.json"
    assert submission.write_vizwiz(str(path), predictions) == 2
    written = json.loads(path.read_text())
    assert written == [
        {"image": "VizWiz_test_00020000.jpg", "answer": "coffee mug"},
        {"image": "VizWiz_test_00020001.jpg", "answer": ""},
    ]
    assert all(sorted(r) == sorted(server["format"]) for r in written)


def test_vizwiz_submission_refuses_what_the_server_would():
    with pytest.raises(ValueError, match="without an image id"):
        submission.vizwiz_results([{"prediction": "yes"}])
    with pytest.raises(ValueError, match="twice"):
        submission.write_vizwiz(
            "/nonexistent/never_written.json",
            [{"id": "VizWiz_val_1", "prediction": "a"}, {"id": "VizWiz_val_1", "prediction": "b"}],
        )
