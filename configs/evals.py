"""How each dataset is evaluated: the declarations a run config puts in `config.evals`.

One row per dataset (the paper's 26 and the embedded demo's): mode (generate, or rank the
candidates by likelihood), metric, prompt (named slots filled from each record: {question},
{options}, {ocr}, {text}, {dialog}, {answer}, {instruction}) and decoding. The values are the
zero-shot settings of InstructBLIP's held-out evaluation (paper Sec. 3 and appendix; LAVIS
`blip2_t5_instruct.py` `predict_answers` / `generate` / `_predict_class`); docs/PROTOCOL.md gives
the source of each. A run config declares what it evaluates with `declare(names)` and any field
can be overridden per evaluation, also from the command line:
`--config.evals.gqa.prompt="Question: {question} Answer:"`.
"""

from __future__ import annotations

import ml_collections

from ib_jax.contract import config as config_types

VQA_PROMPT = "Question: {question} Short answer:"
CAPTION_PROMPT = "A short image description:"
MC_PROMPT = "Question: {question} Options: {options}. Short answer:"
QG_PROMPT = "Given the image, generate a question whose answer is: {answer}. Question:"

# LAVIS's short-answer decoding (predict_answers: beam 5, max_len 10, min_len 1, length penalty
# -1) and its caption decoding (generate: beam 5, max_length 30 -> 80 in the InstructBLIP
# caption configs, min_length 10, length penalty 1).
QA = dict(num_beams=5, max_new_tokens=10, min_new_tokens=1, length_penalty=-1.0)
CAPTION = dict(
    mode="generate",
    metric="cider",
    prompt=CAPTION_PROMPT,
    num_beams=5,
    max_new_tokens=80,
    min_new_tokens=10,
    length_penalty=1.0,
)
# Long free-form answers (LLaVA conversations, question generation).
LONG = dict(mode="generate", metric="cider", num_beams=5, max_new_tokens=256, length_penalty=1.0)


def _qa(metric: str, prompt: str = VQA_PROMPT, mode: str = "generate", **fields) -> dict:
    return dict(QA, mode=mode, metric=metric, prompt=prompt, **fields)


PROTOCOL: dict[str, dict] = {
    # ----- held-in (evaluated on their validation splits when asked) ---------------------------
    "coco_caption": CAPTION,
    "web_capfilt": CAPTION,
    "textcaps": dict(CAPTION, prompt="OCR tokens: {ocr}. " + CAPTION_PROMPT),
    "vqav2": _qa("vqa_accuracy"),
    "okvqa": _qa("vqa_accuracy"),
    "aokvqa": _qa("accuracy", MC_PROMPT, "rank"),
    "ocrvqa": _qa("exact_match"),
    "vqav2_qg": dict(LONG, prompt=QG_PROMPT),
    "okvqa_qg": dict(LONG, prompt=QG_PROMPT),
    "aokvqa_qg": dict(LONG, prompt=QG_PROMPT),
    "llava_conversation": dict(LONG, prompt="{instruction}"),
    "llava_detail": dict(LONG, prompt="{instruction}"),
    "llava_complex_reasoning": dict(LONG, prompt="{instruction}"),
    # ----- held-out: the paper's zero-shot suite (Table 1) -------------------------------------
    "nocaps": CAPTION,
    "flickr30k": CAPTION,
    "gqa": _qa("exact_match"),
    # VSR's answer space is binary: rank "true" / "false" instead of free generation.
    "vsr": _qa(
        "accuracy",
        'Based on the image, is this statement true or false? "{text}" Answer:',
        "rank",
        candidates="true,false",
    ),
    "iconqa": _qa("accuracy", MC_PROMPT, "rank"),
    "vizwiz": _qa("vqa_accuracy"),
    "scienceqa": _qa(
        "accuracy", "Context: {text} Question: {question} Options: {options}. Answer:", "rank"
    ),
    "textvqa": _qa("vqa_accuracy", "OCR tokens: {ocr}. Question: {question} Short answer:"),
    # MSVD/MSRVTT-QA rank the training split's answer vocabulary (each record's `choices`, see
    # data_pipelines/layouts.py EVAL_OPTIONS): ~2,000 candidates, scored 128 per decoder pass.
    "msvd_qa": _qa("exact_match", mode="rank", candidate_chunk=128),
    "msrvtt_qa": _qa("exact_match", mode="rank", candidate_chunk=128),
    "ivqa": _qa("ivqa_accuracy"),
    # Visual Dialog ranks 100 options per round: bounded memory with 20 candidates per pass.
    "visdial": _qa(
        "mrr",
        "Dialog history: {dialog}\n Question: {question} Short answer:",
        "rank",
        candidate_chunk=20,
    ),
    # Fixed two-way choice scored by likelihood; the first candidate is the positive class (AUC).
    "hateful_memes": _qa(
        "auc",
        'This is an image with: "{text}" written on it. Is it hateful? Answer:',
        "rank",
        candidates="yes,no",
    ),
    # ----- the embedded demo ---------------------------------------------------------------------
    "demo_caption": CAPTION,
    "demo_vqa": _qa("vqa_accuracy"),
    "demo_mc": _qa("accuracy", MC_PROMPT, "rank"),
    "demo_qg": dict(LONG, prompt=QG_PROMPT),
}

# Your own data (configs/finetune.py `task=`): the prompt is the training instruction, verbatim
# ({instruction}); `vqa` scores exact match after VQA answer normalization (VQA accuracy would
# cap a single reference answer at 1/3); `choice` ranks the row's choices.
USER_TASKS: dict[str, dict] = {
    "vqa": _qa("exact_match", "{instruction}"),
    "caption": dict(CAPTION, prompt="{instruction}"),
    "choice": _qa("accuracy", "{instruction}", "rank"),
    "open": dict(LONG, prompt="{instruction}"),
}


def declare_user(name: str, task: str, **overrides) -> ml_collections.ConfigDict:
    """`config.evals` entry for the user's dataset `name` evaluated as `task` (USER_TASKS)."""
    if task not in USER_TASKS:
        raise ValueError(f"task={task!r} is not one of {sorted(USER_TASKS)}")
    row = config_types.defaults(config_types.Evaluation, **USER_TASKS[task], **overrides)
    return ml_collections.ConfigDict({k: v for k, v in row.items() if k != "name"})


def declare(names: list[str] | tuple[str, ...], **overrides) -> ml_collections.ConfigDict:
    """`config.evals` for the datasets `names` (their PROTOCOL rows), every field present so that
    each can be overridden from the command line; `overrides` apply to every entry."""
    evals = ml_collections.ConfigDict()
    for name in names:
        if name not in PROTOCOL:
            raise ValueError(
                f"configs/evals.py: no evaluation protocol for {name!r}; known: {sorted(PROTOCOL)}"
            )
        row = config_types.defaults(config_types.Evaluation, **PROTOCOL[name], **overrides)
        evals[name] = {k: v for k, v in row.items() if k != "name"}  # the key is the name
    return evals
