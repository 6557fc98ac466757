"""Instruction templates: the paper's pools, seeded choice, short-answer and OCR handling."""

import collections

import numpy as np
import pytest

from data_pipelines import specs, templates


def test_paper_pool_sizes_and_every_category_has_templates():
    assert len(templates.CAPTION_TEMPLATES) == 13
    assert len(templates.VQA_TEMPLATES) == 10
    assert len(templates.QUESTION_GENERATION_TEMPLATES) == 6
    assert set(templates.TEMPLATES) == set(specs.TASK_CATEGORIES)
    for category, pool in templates.TEMPLATES.items():
        if category != "llava_instruct":
            assert 6 <= len(pool) <= 15, category
    assert templates.CAPTION_TEMPLATES[0] == "A short image caption:"
    assert "Question: {question} Short answer:" in templates.VQA_TEMPLATES


def test_choice_is_a_function_of_seed_dataset_index():
    record = {"id": "1", "question": "what is it?", "answers": ["cat", "cat", "dog"]}

    def run(seed, dataset, index):
        return templates.make_instruction(
            record,
            "image_question_answering",
            short_answer=True,
            ocr=False,
            rng=templates.example_rng(seed, dataset, index),
        )

    assert run(0, "vqav2", 5) == run(0, "vqav2", 5)
    draws = {run(0, "vqav2", i)[0] for i in range(200)}
    assert len(draws) == 10  # every VQA template gets used
    assert [run(0, "vqav2", i) for i in range(20)] != [run(1, "vqav2", i) for i in range(20)]
    assert [run(0, "vqav2", i) for i in range(20)] != [run(0, "okvqa", i) for i in range(20)]
    answers = collections.Counter(run(0, "vqav2", i)[1] for i in range(600))
    assert set(answers) == {"cat", "dog"} and 0.55 < answers["cat"] / 600 < 0.78  # ~2/3, by vote


def test_short_answer_flag_controls_short_phrasing():
    short = templates.template_pool("image_captioning", short_answer=True)
    long = templates.template_pool("image_captioning", short_answer=False)
    assert len(short) == 13 and 0 < len(long) < 13
    assert not any(templates.is_short_template(t) for t in long)
    assert any("short" in t.lower() or "brief" in t.lower() for t in short)


def test_ocr_tokens_go_in_front_and_categories_fill_fields():
    rng = np.random.default_rng(0)
    instruction, target = templates.make_instruction(
        {
            "question": "what does the sign say?",
            "answers": ["stop"],
            "ocr_tokens": ["STOP", "Main"],
        },
        "image_qa_reading_comprehension",
        short_answer=True,
        ocr=True,
        rng=rng,
    )
    assert (
        instruction.startswith("OCR tokens: STOP Main. ")
        and "what does the sign say?" in instruction
    )
    assert target == "stop"
    instruction, target = templates.make_instruction(
        {"question": "what color?", "answers": ["red"]},
        "image_question_generation",
        short_answer=False,
        ocr=False,
        rng=rng,
    )
    assert "red" in instruction and target == "what color?"
    instruction, target = templates.make_instruction(
        {"question": "what color?", "choices": ["red", "blue"], "answer_index": 1},
        "knowledge_grounded_image_qa",
        short_answer=True,
        ocr=False,
        rng=rng,
    )
    assert "red, blue" in instruction and target == "blue"
    instruction, target = templates.make_instruction(
        {"captions": ["a cat."]}, "image_captioning", short_answer=False, ocr=False, rng=rng
    )
    assert instruction in templates.CAPTION_TEMPLATES and target == "a cat."


def test_missing_field_names_the_field_and_example():
    with pytest.raises(KeyError, match="'answers'.*|answers"):
        templates.make_instruction(
            {"id": "q7", "dataset": "vqav2", "question": "why?"},
            "image_question_answering",
            short_answer=True,
            ocr=False,
            rng=np.random.default_rng(0),
        )
    with pytest.raises(KeyError, match="no instruction templates for task category 'nope'"):
        templates.template_pool("nope", short_answer=True)
