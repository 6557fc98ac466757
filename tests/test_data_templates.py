"""Instruction templates: the paper's pools, seeded choice, short-answer and OCR handling."""

import collections

import numpy as np
import pytest

from configs import evals
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
        instruction.startswith("OCR tokens: STOP, Main. ")
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


# --- every dataset as a training source, with the context its zero-shot prompt gives ----------


@pytest.fixture(scope="module")
def miniature_records(tmp_path_factory):
    """{(dataset, split): records} of the 26 datasets, parsed from the miniature's files."""
    from data_pipelines import layouts, sources
    from data_pipelines.miniature import write_miniature

    root = str(tmp_path_factory.mktemp("miniature"))
    write_miniature(root, seed=0)
    return {
        (name, split): sources.load_records(layouts.entry(name, split, root))
        for name in layouts.LAYOUTS
        for split in layouts.splits_of(name)
    }


def _train_instructions(records, spec, seeds=range(8)):
    out = []
    for seed in seeds:
        for index, record in enumerate(records):
            rng = templates.example_rng(seed, spec.name, index)
            out.append(
                templates.make_instruction(
                    record,
                    spec.task_category,
                    short_answer=spec.short_answer,
                    ocr=spec.ocr,
                    rng=rng,
                )
            )
    return out


def test_every_dataset_with_a_training_split_makes_training_examples(miniature_records):
    from data_pipelines import registry

    trained = set()
    for (name, split), records in miniature_records.items():
        if split != "train":
            continue
        pairs = _train_instructions(records, registry.get(name), seeds=[0])
        assert all(instruction and target for instruction, target in pairs), name
        trained.add(name)
    # Every dataset but NoCaps (no training split is published) can be finetuned on.
    assert trained == {n for n in registry.names() if not n.startswith("demo")} - {"nocaps"}


def test_binary_tasks_train_towards_the_answers_their_prompts_rank(miniature_records):
    from data_pipelines import registry

    for name, candidates in (("vsr", {"true", "false"}), ("hateful_memes", {"yes", "no"})):
        records = miniature_records[name, "train"]
        pairs = _train_instructions(records, registry.get(name), seeds=[0])
        assert [t for _, t in pairs] == [
            {1: sorted(candidates)[-1], 0: sorted(candidates)[0]}[r["label"]]
            if name == "vsr"
            else ("yes" if r["label"] else "no")
            for r in records
        ]
        assert all(r["text"] in instruction for r, (instruction, _) in zip(records, pairs))
    # The zero-shot VSR prompt is one of the statement templates training draws from.
    vsr_prompt = evals.PROTOCOL["vsr"]["prompt"]
    assert vsr_prompt in templates.STATEMENT_TEMPLATES


# (dataset, the record field that carries context, the words both prompts must contain)
CONTEXTS = [
    ("scienceqa", "text", lambda r: f"Context: {r['text']} "),
    ("textvqa", "ocr_tokens", lambda r: f"OCR tokens: {templates.ocr_text(r['ocr_tokens'])}."),
    ("textcaps", "ocr_tokens", lambda r: f"OCR tokens: {templates.ocr_text(r['ocr_tokens'])}."),
    ("visdial", "dialog", lambda r: f"{r['dialog'][-1][0]} {r['dialog'][-1][1]}"),
    (
        "llava_conversation",
        "dialog",
        lambda r: f"{r['dialog'][-1][0]} Assistant: {r['dialog'][-1][1]}",
    ),
]


@pytest.mark.parametrize("name,key,context", CONTEXTS)
def test_training_and_zero_shot_prompts_give_the_same_context(
    miniature_records, name, key, context
):
    from data_pipelines import eval_pipeline, registry

    spec = registry.get(name)
    records = miniature_records[name, "train"]
    pairs = _train_instructions(records, spec, seeds=[0])
    checked = 0
    for record, (instruction, _) in zip(records, pairs):
        if record.get(key):
            assert context(record) in instruction, (name, instruction)
            prompt = evals.PROTOCOL[name]["prompt"]
            assert context(record) in eval_pipeline.eval_instruction(prompt, spec, record)
            checked += 1
    assert checked, name  # the miniature has examples with context
