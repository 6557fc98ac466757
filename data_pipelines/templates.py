"""Instruction templates per task category, and the seeded choice of template + target per example.

Captioning (13), VQA (10) and question-generation (6) templates are the paper's (Dai et al. 2023,
appendix table of instruction templates; `<Image>` is dropped because the visual tokens are
prepended by the model, not written in the text). The other categories' templates follow the same
style and are ours; the paper reuses the VQA templates for reasoning, knowledge, scene-text and
video QA, which we do too.

Two dataset flags shape the choice (paper, section 2.2):
- `short_answer`: datasets whose answers are short keep the full pool, including the templates
  that ask for a "short"/"brief" answer; the others draw only from templates without such words, so
  the model does not learn to answer everything tersely. Captions are short responses by nature:
  the caption datasets always draw the whole caption pool (the paper's caption templates are
  written for them, "short"/"briefly" ones included), so "A short image description:", the
  NoCaps/Flickr30K zero-shot prompt, is a training instruction too.
- `ocr`: scene-text datasets get "OCR tokens: ..." put in front of the instruction. In front, not
  behind, because the LM instruction is truncated from the left: a long token list must be cut
  before the question is. TextVQA and TextCaps have it (Rosetta OCR); OCR-VQA publishes no OCR
  tokens, so it has none. The tokens are shown as LAVIS's models show them at evaluation
  (`ocr_text`: the first 30, joined with ", "), so training and zero-shot prompts agree.

Training and zero-shot prompts give the same context: ScienceQA's hint as "Context: ...", the
OCR tokens, a Visual Dialog / LLaVA turn's earlier turns. A true/false statement (VSR) draws from
STATEMENT_TEMPLATES, of which the zero-shot prompt is the first.

The choice is a pure function of (seed, dataset name, example index), so a run is reproducible.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

CAPTION_TEMPLATES = (
    "A short image caption:",
    "A short image description:",
    "A photo of",
    "An image that shows",
    "Write a short description for the image.",
    "Write a description for the photo.",
    "Provide a description of what is presented in the photo.",
    "Briefly describe the content of the image.",
    "Can you briefly explain what you see in the image?",
    "Could you use a few words to describe what you perceive in the photo?",
    "Please provide a short depiction of the picture.",
    "Using language, provide a short account of the image.",
    "Use a few words to illustrate what is happening in the picture.",
)

VQA_TEMPLATES = (
    "{question}",
    "Question: {question}",
    "{question} A short answer to the question is",
    "Q: {question} A:",
    "Question: {question} Short answer:",
    "Given the image, answer the following question with no more than three words. {question}",
    "Based on the image, respond to this question with a short answer: {question}. Answer:",
    "Use the provided image to answer the question: {question} Provide your answer as short as possible:",
    'What is the answer to the following question? "{question}"',
    'The question "{question}" can be answered using the image. A short answer is',
)

QUESTION_GENERATION_TEMPLATES = (
    "Given the image, generate a question whose answer is: {answer}. Question:",
    "Based on the image, provide a question with the answer: {answer}. Question:",
    'Given the visual representation, create a question for which the answer is "{answer}".',
    "From the image provided, craft a question that leads to the reply: {answer}. Question:",
    "Considering the picture, come up with a question where the answer is: {answer}.",
    "Taking the image into account, generate an question that has the answer: {answer}. Question:",
)

# Multiple choice (A-OKVQA style): the VQA question followed by the options.
MULTIPLE_CHOICE_TEMPLATES = (
    "{question} Options: {options}. Answer:",
    "Question: {question} Options: {options}. Short answer:",
    "Q: {question} Choose from: {options}. A:",
    "Answer the question by choosing one of the options. Question: {question} Options: {options}.",
    "Given the image, which option answers the question? {question} Options: {options}. Answer:",
    "Based on the image, pick the best answer to this question: {question} Options: {options}.",
    "Use the image to choose the correct answer. {question} Candidates: {options}. Answer:",
    'Which of these options answers "{question}"? Options: {options}. Answer briefly:',
    "{question} Select one of the following: {options}. Your choice:",
    "Look at the image and answer with one of {options}. Question: {question} Answer:",
)

DIALOG_TEMPLATES = (
    "Dialog history: {history} Question: {question} Short answer:",
    "{history} Q: {question} A:",
    "Given the image and the conversation so far: {history} Answer the next question. {question}",
    "Conversation: {history} Question: {question} Answer:",
    "Based on the image and the dialog {history}, respond to this question with a short answer: {question}. Answer:",
    "Previous questions and answers: {history} Now answer: {question}",
    "Continue the conversation about the image. {history} Question: {question} Answer briefly:",
    "Dialog: {history} Using the image, answer: {question}",
    "{history} Question: {question} A short answer to the question is",
    'The dialog so far is {history} What is the answer to the question "{question}"?',
)

# A statement to judge true or false (VSR): the caption is the statement, the answer true/false.
STATEMENT_TEMPLATES = (
    'Based on the image, is this statement true or false? "{text}" Answer:',
    'Is the following statement about the image true or false? "{text}"',
    '"{text}" Looking at the image, is this true or false? Answer:',
    'Decide whether the statement "{text}" correctly describes the image. Answer true or false:',
    'Given the image, answer true or false: "{text}"',
)

CLASSIFICATION_TEMPLATES = (
    'This is an image with: "{text}" written on it. Is it hateful? Answer:',
    'The image has the text "{text}" on it. Is this meme hateful? Answer yes or no:',
    'Text in the image: "{text}". Is the image hateful? Short answer:',
    'Considering the picture and its caption "{text}", is it hateful? Answer:',
    'Given the image with the words "{text}", decide whether it is hateful. Answer:',
    'Is the meme with the text "{text}" hateful or not? Answer:',
    'Based on the image and the text "{text}", is the content hateful? Answer briefly:',
    'Question: Is this image, which says "{text}", hateful? Answer:',
    'Read the text "{text}" and look at the image. Is it hateful? Answer:',
    'Does the meme saying "{text}" express hate? Answer:',
)

TEMPLATES: dict[str, tuple[str, ...]] = {
    "image_captioning": CAPTION_TEMPLATES,
    "image_captioning_reading_comprehension": CAPTION_TEMPLATES,
    "visual_reasoning": VQA_TEMPLATES,
    "image_question_answering": VQA_TEMPLATES,
    "knowledge_grounded_image_qa": VQA_TEMPLATES,
    "image_qa_reading_comprehension": VQA_TEMPLATES,
    "image_question_generation": QUESTION_GENERATION_TEMPLATES,
    "video_question_answering": VQA_TEMPLATES,
    "visual_conversational_qa": DIALOG_TEMPLATES,
    "image_classification": CLASSIFICATION_TEMPLATES,
    "llava_instruct": ("{question}",),  # LLaVA's own instructions are used as they are.
}

# Words that ask for a short answer; templates containing them are kept for short-answer datasets only.
# Task categories whose responses are short whatever the dataset's flag (captions).
SHORT_RESPONSE_CATEGORIES = frozenset(
    {"image_captioning", "image_captioning_reading_comprehension"}
)
SHORT_WORDS = ("short", "brief", "few words", "three words")


def is_short_template(template: str) -> bool:
    """Whether the template asks for a short answer (kept for short-answer datasets only)."""
    lowered = template.lower()
    return any(word in lowered for word in SHORT_WORDS)


def template_pool(category: str, *, short_answer: bool) -> tuple[str, ...]:
    """The templates a dataset of `category` draws from."""
    if category not in TEMPLATES:
        raise KeyError(
            f"no instruction templates for task category {category!r}; known: {sorted(TEMPLATES)}"
        )
    pool = TEMPLATES[category]
    if not short_answer:
        pool = tuple(t for t in pool if not is_short_template(t)) or pool
    return pool


def example_rng(seed: int, dataset: str, index: int) -> np.random.Generator:
    """A Generator that depends only on (seed, dataset name, example index): crc32 is stable across
    processes and Python runs (unlike `hash`)."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(dataset.encode()), int(index)])


def most_weighted_choice(answers: list[str], rng: np.random.Generator) -> str:
    """An answer drawn with probability proportional to how many annotators gave it (as LAVIS)."""
    unique, counts = np.unique(np.asarray(answers, dtype=object).astype(str), return_counts=True)
    return str(rng.choice(unique, p=counts / counts.sum()))


# LAVIS `blip2_t5_instruct.predict_answers` (and `generate`, "For TextCaps"; the Vicuna model
# alike): `prompt.format(', '.join(samples['ocr_tokens'][i][:30]), samples["text_input"][i])`.
OCR_MAX_TOKENS = 30
OCR_SEPARATOR = ", "


def ocr_text(tokens: Sequence[str] | None) -> str:
    """A record's OCR tokens as prompts show them: the first 30, joined with ", " (LAVIS)."""
    return OCR_SEPARATOR.join(list(tokens or [])[:OCR_MAX_TOKENS])


def _format_options(choices: list[str]) -> str:
    return ", ".join(choices)


def context_prefix(record: Mapping[str, Any]) -> str:
    """ "Context: <text> " for a multiple-choice record with a textual context (ScienceQA's hint),
    the same words the zero-shot prompt gives it; "" otherwise."""
    return f"Context: {record['text']} " if record.get("text") else ""


def llava_instruction(record: Mapping[str, Any]) -> str:
    """A LLaVA turn's instruction: the earlier turns of its conversation, then the question.

    The first turn is LLaVA's own question alone (as LAVIS trains on it); later turns put the
    conversation so far in front, as "Human: ... Assistant: ..." pairs. In front, because the
    LM instruction is truncated from the left: a long history is cut before the question is.
    """
    history = " ".join(f"Human: {q} Assistant: {a}" for q, a in record.get("dialog") or [])
    return f"{history} Human: {record['question']} Assistant:" if history else record["question"]


def _fill(template: str, **fields: str) -> str:
    return template.format(**fields).strip()


def make_instruction(
    record: Mapping[str, Any],
    category: str,
    *,
    short_answer: bool,
    ocr: bool,
    rng: np.random.Generator,
) -> tuple[str, str]:
    """A canonical record (docs/CONTRACTS.md) -> (filled instruction, target text) for training.

    Raises KeyError naming the missing field when the record lacks what its category needs.
    """

    def need(field: str) -> Any:
        """record[field]; KeyError naming the example when it is missing or empty."""
        if field not in record or record[field] in (None, "", []):
            raise KeyError(
                f"{category} example {record.get('id', '?')!r} of {record.get('dataset', '?')!r} "
                f"has no {field!r}"
            )
        return record[field]

    short_answer = short_answer or category in SHORT_RESPONSE_CATEGORIES
    pool = template_pool(category, short_answer=short_answer)
    template = pool[int(rng.integers(len(pool)))]
    if category in ("image_captioning", "image_captioning_reading_comprehension"):
        captions = need("captions")
        instruction, target = template, captions[int(rng.integers(len(captions)))]
    elif category == "image_question_generation":
        answer = (
            most_weighted_choice(need("answers"), rng)
            if record.get("answers")
            else need("choices")[need("answer_index")]
        )
        instruction, target = _fill(template, answer=answer), need("question")
    elif category == "visual_conversational_qa":
        history = " ".join(f"{q} {a}." for q, a in record.get("dialog", []))
        instruction = _fill(template, history=history, question=need("question"))
        target = most_weighted_choice(need("answers"), rng)
    elif category == "image_classification":
        instruction = _fill(template, text=record.get("text", ""))
        target = most_weighted_choice(need("answers"), rng)
    elif category == "llava_instruct":
        need("question")
        instruction, target = llava_instruction(record), need("answers")[0]
    elif "question" not in record and "label" in record:  # a statement to judge (VSR)
        template = STATEMENT_TEMPLATES[int(rng.integers(len(STATEMENT_TEMPLATES)))]
        instruction = _fill(template, text=need("text"))
        target = most_weighted_choice(need("answers"), rng)
    elif "choices" in record and "answer_index" in record:
        mc_pool = (
            MULTIPLE_CHOICE_TEMPLATES
            if short_answer
            else tuple(t for t in MULTIPLE_CHOICE_TEMPLATES if not is_short_template(t))
        )
        template = mc_pool[int(rng.integers(len(mc_pool)))]
        choices = need("choices")
        instruction = _fill(template, question=need("question"), options=_format_options(choices))
        instruction = context_prefix(record) + instruction  # ScienceQA's hint, as zero-shot
        target = choices[int(record["answer_index"])]
    else:  # the VQA family: reasoning, knowledge, scene text, video
        instruction = _fill(template, question=need("question"))
        target = most_weighted_choice(need("answers"), rng)
    if ocr and record.get("ocr_tokens"):
        instruction = f"OCR tokens: {ocr_text(record['ocr_tokens'])}. {instruction}"
    return instruction, target
