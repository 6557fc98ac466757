"""How each dataset is evaluated: the declarations a run config puts in `config.evals`.

One row per dataset (the paper's 26 and the embedded demo's): mode (generate, or rank the
candidates by likelihood), metric, prompt (named slots filled from each record: {question},
{options}, {ocr}, {text}, {dialog}, {answer}, {instruction}) and decoding. The values are the
zero-shot settings of InstructBLIP's held-out evaluation (paper Sec. 3 and appendix; LAVIS
`blip2_t5_instruct.py` `predict_answers` / `generate` / `_predict_class`); docs/PROTOCOL.md gives
the source of each; where LAVIS's Vicuna model decodes differently, the rows of
`lm_type="llama"` (PROTOCOLS) say so. A run config declares what it evaluates with
`declare(names, lm_type)` and any field can be overridden per evaluation, also from the command
line:
`--config.evals.gqa.prompt="Question: {question} Answer:"`.
"""

from __future__ import annotations

import ml_collections

from ib_jax.contract import config as config_types

VQA_PROMPT = "Question: {question} Short answer:"
CAPTION_PROMPT = "A short image description:"
MC_PROMPT = "Question: {question} Options: {options}. Short answer:"
QG_PROMPT = "Given the image, generate a question whose answer is: {answer}. Question:"

# LAVIS's decoding, as its InstructBLIP models run the paper's zero-shot evaluation
# (docs/PROTOCOL.md quotes each source). Short answers: `predict_answers(num_beams=5, max_len=10,
# min_len=1, length_penalty=-1)` (the Vicuna model's default length_penalty is 0), which calls
# `generate` without a repetition penalty, so generate's default 1.5 applies. Captions: the
# captioning task's `generate(num_beams=5, max_length=80, min_length=10)` with generate's
# defaults (repetition_penalty 1.5, length_penalty 1). Lengths here count new tokens
# (`ib_jax.decode.lavis_lengths`): HF's min_length counts the T5 decoder's start token, and for
# Vicuna both lengths count the [[bos]] HF 4.28-4.33 put in front of an inputs_embeds generation.
# LAVIS's Vicuna generates from inputs_embeds alone, so its repetition penalty leaves the prompt
# out (penalize_prompt False).
DECODING: dict[str, dict[str, dict]] = {
    "t5": {
        "qa": dict(
            num_beams=5,
            max_new_tokens=10,
            min_new_tokens=0,
            length_penalty=-1.0,
            repetition_penalty=1.5,
        ),
        "caption": dict(
            num_beams=5,
            max_new_tokens=80,
            min_new_tokens=9,
            length_penalty=1.0,
            repetition_penalty=1.5,
        ),
    },
    "llama": {
        "qa": dict(
            num_beams=5,
            max_new_tokens=9,
            min_new_tokens=0,
            length_penalty=0.0,
            repetition_penalty=1.5,
            penalize_prompt=False,
        ),
        "caption": dict(
            num_beams=5,
            max_new_tokens=79,
            min_new_tokens=9,
            length_penalty=1.0,
            repetition_penalty=1.5,
            penalize_prompt=False,
        ),
    },
}
# The embedded demo and your own data are not the paper's: they keep the project's own decoding
# (no repetition penalty, at least one new token), which their recorded scores were measured with.
OWN_QA = dict(num_beams=5, max_new_tokens=10, min_new_tokens=1, length_penalty=-1.0)
OWN_CAPTION = dict(
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
# LAVIS's `_predict_class` scores whole candidates (tokenized uncut): candidate_max_len 0 sizes
# each batch's labels to its longest candidate (rounded up to a power of two).
WHOLE = dict(candidate_max_len=0)


def _protocol(lm_type: str) -> dict[str, dict]:
    """Every dataset's evaluation with the decoding of the LM family `lm_type` (DECODING)."""
    qa, caption_decoding = DECODING[lm_type]["qa"], DECODING[lm_type]["caption"]
    caption = dict(mode="generate", metric="cider", prompt=CAPTION_PROMPT, **caption_decoding)

    def _qa(metric: str, prompt: str = VQA_PROMPT, mode: str = "generate", **fields) -> dict:
        return dict(qa, mode=mode, metric=metric, prompt=prompt, **fields)

    return {
        # ----- held-in (evaluated on their validation splits when asked) ---------------------------
        "coco_caption": caption,
        "web_capfilt": caption,
        "textcaps": dict(caption, prompt="OCR tokens: {ocr}. " + CAPTION_PROMPT),
        "vqav2": _qa("vqa_accuracy"),
        "okvqa": _qa("vqa_accuracy"),
        "aokvqa": _qa("accuracy", MC_PROMPT, "rank", **WHOLE),
        "ocrvqa": _qa("exact_match"),
        "vqav2_qg": dict(LONG, prompt=QG_PROMPT),
        "okvqa_qg": dict(LONG, prompt=QG_PROMPT),
        "aokvqa_qg": dict(LONG, prompt=QG_PROMPT),
        "llava_conversation": dict(LONG, prompt="{instruction}"),
        "llava_detail": dict(LONG, prompt="{instruction}"),
        "llava_complex_reasoning": dict(LONG, prompt="{instruction}"),
        # ----- held-out: the paper's zero-shot suite (Table 1) -------------------------------------
        "nocaps": caption,
        "flickr30k": caption,
        "gqa": _qa("exact_match"),
        # VSR's answer space is binary: rank "true" / "false" instead of free generation.
        "vsr": _qa(
            "accuracy",
            'Based on the image, is this statement true or false? "{text}" Answer:',
            "rank",
            candidates="true,false",
            **WHOLE,
        ),
        "iconqa": _qa("accuracy", MC_PROMPT, "rank", **WHOLE),
        "vizwiz": _qa("vqa_accuracy"),
        "scienceqa": _qa(
            "accuracy",
            "Context: {text} Question: {question} Options: {options}. Answer:",
            "rank",
            **WHOLE,
        ),
        "textvqa": _qa("vqa_accuracy", "OCR tokens: {ocr}. Question: {question} Short answer:"),
        # MSVD/MSRVTT-QA rank the training split's answer vocabulary (each record's `choices`, see
        # data_pipelines/layouts.py EVAL_OPTIONS): ~2,000 candidates, scored 128 per decoder pass.
        "msvd_qa": _qa("exact_match", mode="rank", candidate_chunk=128, **WHOLE),
        "msrvtt_qa": _qa("exact_match", mode="rank", candidate_chunk=128, **WHOLE),
        "ivqa": _qa("ivqa_accuracy"),
        # Visual Dialog ranks 100 options per round: bounded memory with 20 candidates per pass.
        "visdial": _qa(
            "mrr",
            "Dialog history: {dialog}\n Question: {question} Short answer:",
            "rank",
            candidate_chunk=20,
            **WHOLE,
        ),
        # Fixed two-way choice scored by likelihood; the first candidate is the positive class (AUC).
        "hateful_memes": _qa(
            "auc",
            'This is an image with: "{text}" written on it. Is it hateful? Answer:',
            "rank",
            candidates="yes,no",
            **WHOLE,
        ),
        # ----- the embedded demo ---------------------------------------------------------------------
        "demo_caption": OWN_CAPTION,
        "demo_vqa": dict(OWN_QA, mode="generate", metric="vqa_accuracy", prompt=VQA_PROMPT),
        "demo_mc": dict(OWN_QA, mode="rank", metric="accuracy", prompt=MC_PROMPT),
        "demo_qg": dict(LONG, prompt=QG_PROMPT),
    }


# Datasets whose paper split only an evaluation server scores (VizWiz test-dev): their local
# score is the public val split's, declared under this name, never the paper split's;
# ib_jax/eval/submission.py writes the server's file next to the predictions.
REPORTED_AS = {"vizwiz": "vizwiz_val"}

# Per LM family (DECODING); PROTOCOL is FlanT5's.
PROTOCOLS: dict[str, dict[str, dict]] = {lm: _protocol(lm) for lm in DECODING}
PROTOCOL = PROTOCOLS["t5"]

# Your own data (configs/finetune.py `task=`): the prompt is the training instruction, verbatim
# ({instruction}); `vqa` scores exact match after VQA answer normalization (VQA accuracy would
# cap a single reference answer at 1/3); `choice` ranks the row's choices.
USER_TASKS: dict[str, dict] = {
    "vqa": dict(OWN_QA, mode="generate", metric="exact_match", prompt="{instruction}"),
    "caption": dict(OWN_CAPTION, prompt="{instruction}"),
    "choice": dict(OWN_QA, mode="rank", metric="accuracy", prompt="{instruction}"),
    "open": dict(LONG, prompt="{instruction}"),
}


def declare_user(name: str, task: str, **overrides) -> ml_collections.ConfigDict:
    """`config.evals` entry for the user's dataset `name` evaluated as `task` (USER_TASKS)."""
    if task not in USER_TASKS:
        raise ValueError(f"task={task!r} is not one of {sorted(USER_TASKS)}")
    row = config_types.defaults(config_types.Evaluation, **{**USER_TASKS[task], **overrides})
    return ml_collections.ConfigDict({k: v for k, v in row.items() if k != "name"})


def declare(
    names: list[str] | tuple[str, ...], lm_type: str = "t5", **overrides
) -> ml_collections.ConfigDict:
    """`config.evals` for the datasets `names` (their rows for the LM family `lm_type`, t5 or
    llama), every field present so that each can be overridden from the command line;
    `overrides` apply to every entry."""
    if lm_type not in PROTOCOLS:
        raise ValueError(f"configs/evals.py: lm_type={lm_type!r} is not one of {sorted(PROTOCOLS)}")
    protocol = PROTOCOLS[lm_type]
    evals = ml_collections.ConfigDict()
    for name in names:
        if name not in protocol:
            raise ValueError(
                f"configs/evals.py: no evaluation protocol for {name!r}; known: {sorted(protocol)}"
            )
        row = config_types.defaults(config_types.Evaluation, **{**protocol[name], **overrides})
        if name in REPORTED_AS:  # reads the dataset `name`, reports under the public split's name
            row["dataset"] = name
        evals[REPORTED_AS.get(name, name)] = {k: v for k, v in row.items() if k != "name"}
    return evals
