"""Registry of the paper's 26 datasets (InstructBLIP Figure 2) plus the embedded demo family.

Held-in (13, used for instruction tuning): COCO Caption, Web CapFilt, TextCaps, VQAv2, OKVQA,
A-OKVQA, OCR-VQA, the question-generation variants of VQAv2/OKVQA/A-OKVQA, and the three parts of
LLaVA-Instruct-150K (conversation, detailed description, complex reasoning: Figure 2 counts them
separately, which is how the paper arrives at 26 datasets / 13 held-in).
Held-out (13, zero-shot evaluation only): NoCaps, Flickr30K, GQA, VSR, IconQA, VizWiz, ScienceQA
(IMG), TextVQA, MSVD-QA, MSRVTT-QA, iVQA, Visual Dialog, HatefulMemes.

`num_train` is the size of the public training split (the unit the parser yields: questions for
QA, captions for captioning, rounds for dialogs); `size_source` says where the number comes from.
It drives the sqrt(size) mixing weights; pass measured sizes to `sampling_weights` to override.
`None` means no training split / not recorded (held-out sets are never mixed).

Eval mode "rank" means the answer is restricted to candidates and chosen by LM likelihood
(the paper's "vocabulary ranking": ScienceQA, IconQA, A-OKVQA MC, HatefulMemes, Visual Dialog,
MSVD-QA, MSRVTT-QA); "generate" decodes freely with `decoding`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

TASK_CATEGORIES = (
    "image_captioning",
    "image_captioning_reading_comprehension",
    "visual_reasoning",
    "image_question_answering",
    "knowledge_grounded_image_qa",
    "image_qa_reading_comprehension",
    "image_question_generation",
    "video_question_answering",
    "visual_conversational_qa",
    "image_classification",
    "llava_instruct",
)
METRIC_NAMES = ("cider", "vqa_accuracy", "exact_match", "accuracy", "auc", "mrr", "ivqa_accuracy")


@dataclasses.dataclass(frozen=True)
class Decoding:
    """Beam-search settings for eval_mode "generate" (LAVIS's InstructBLIP eval settings)."""

    num_beams: int
    max_new_tokens: int
    min_new_tokens: int
    length_penalty: float


QA_DECODING = Decoding(num_beams=5, max_new_tokens=10, min_new_tokens=1, length_penalty=-1.0)
CAPTION_DECODING = Decoding(num_beams=5, max_new_tokens=80, min_new_tokens=10, length_penalty=1.0)
# Long free-form answers (LLaVA conversations, question generation).
LONG_DECODING = Decoding(num_beams=5, max_new_tokens=256, min_new_tokens=1, length_penalty=1.0)


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    name: str
    task_category: str  # one of TASK_CATEGORIES
    split: str  # "held_in" | "held_out" | "demo"
    format: str  # key into data_pipelines.formats.PARSERS
    num_train: int | None  # public training split size (see module docstring)
    size_source: str  # where num_train comes from
    metric: str  # key into ib_jax.eval.metrics.METRICS
    eval_mode: str  # "generate" | "rank"
    eval_prompt: str  # zero-shot instruction; "{}" slots filled in the order documented
    decoding: Decoding
    short_answer: bool = False  # use the templates' "short"/"briefly" phrasing
    ocr: bool = False  # append OCR tokens to the instruction
    is_video: bool = False
    eval_split: str = ""  # split the paper reports on (documentation)

    def __post_init__(self) -> None:
        # Registry rows are hand-written: catch typos at import time, not in a worker.
        if self.task_category not in TASK_CATEGORIES:
            raise ValueError(
                f"dataset '{self.name}': unknown task category "
                f"'{self.task_category}'; known: {TASK_CATEGORIES}"
            )
        if self.split not in ("held_in", "held_out", "demo"):
            raise ValueError(
                f"dataset '{self.name}': split must be held_in/held_out/demo, got '{self.split}'"
            )
        if self.metric not in METRIC_NAMES:
            raise ValueError(f"dataset '{self.name}': unknown metric '{self.metric}'")
        if self.eval_mode not in ("generate", "rank"):
            raise ValueError(f"dataset '{self.name}': eval_mode must be generate/rank")


# Zero-shot prompts (paper appendix / LAVIS). Slot order: question first, then options/OCR etc.
VQA_PROMPT = "Question: {} Short answer:"
CAPTION_PROMPT = "A short image description:"
MC_PROMPT = "Question: {} Options: {}. Short answer:"  # slots: question, options
QG_PROMPT = "Given the image, generate a question whose answer is: {}. Question:"

_C, _IQA = "image_captioning", "image_question_answering"
_KQA, _VR = "knowledge_grounded_image_qa", "visual_reasoning"
_QG, _VQA = "image_question_generation", "video_question_answering"


def _spec(
    name: str,
    category: str,
    split: str,
    fmt: str,
    num_train: int | None,
    source: str,
    metric: str,
    mode: str,
    prompt: str,
    decoding: Decoding,
    **flags,
) -> DatasetSpec:
    return DatasetSpec(
        name, category, split, fmt, num_train, source, metric, mode, prompt, decoding, **flags
    )


_SPECS = [
    # ----- held-in -------------------------------------------------------------------------
    _spec(
        "coco_caption",
        _C,
        "held_in",
        "coco_caption",
        566_747,
        "Karpathy train+restval (113,287 images, 566,747 captions; LAVIS coco_karpathy_train)",
        "cider",
        "generate",
        CAPTION_PROMPT,
        CAPTION_DECODING,
        eval_split="karpathy_test",
    ),
    _spec(
        "web_capfilt",
        _C,
        "held_in",
        "web_capfilt",
        14_000_000,
        "BLIP CapFilt web pairs, 14M (InstructBLIP Sec. 2.1 / BLIP paper)",
        "cider",
        "generate",
        CAPTION_PROMPT,
        CAPTION_DECODING,
    ),
    _spec(
        "textcaps",
        "image_captioning_reading_comprehension",
        "held_in",
        "textcaps",
        109_765,
        "TextCaps v0.1 train: 109,765 captions on 21,953 images (Sidorov et al. 2020)",
        "cider",
        "generate",
        CAPTION_PROMPT,
        CAPTION_DECODING,
        eval_split="val",
    ),
    _spec(
        "vqav2",
        _IQA,
        "held_in",
        "vqav2",
        443_757,
        "VQA v2 train2014 questions (visualqa.org)",
        "vqa_accuracy",
        "generate",
        VQA_PROMPT,
        QA_DECODING,
        short_answer=True,
        eval_split="val",
    ),
    _spec(
        "okvqa",
        _KQA,
        "held_in",
        "okvqa",
        9_009,
        "OK-VQA v1.1 train questions (Marino 2019)",
        "vqa_accuracy",
        "generate",
        VQA_PROMPT,
        QA_DECODING,
        short_answer=True,
        eval_split="val",
    ),
    _spec(
        "aokvqa",
        _KQA,
        "held_in",
        "aokvqa",
        17_056,
        "A-OKVQA v1.0 train (Schwenk 2022)",
        "accuracy",
        "rank",
        MC_PROMPT,
        QA_DECODING,
        short_answer=True,
        eval_split="val",
    ),
    _spec(
        "ocrvqa",
        "image_qa_reading_comprehension",
        "held_in",
        "ocrvqa",
        801_700,
        "approximate: OCR-VQA has 1,002,146 QA pairs, ~80% train (Mishra 2019); measure "
        "with formats.parse and pass sizes= for the exact count",
        "exact_match",
        "generate",
        VQA_PROMPT,
        QA_DECODING,
        short_answer=True,
    ),
    _spec(
        "vqav2_qg",
        _QG,
        "held_in",
        "vqav2",
        443_757,
        "same questions as vqav2",
        "cider",
        "generate",
        QG_PROMPT,
        LONG_DECODING,
    ),
    _spec(
        "okvqa_qg",
        _QG,
        "held_in",
        "okvqa",
        9_009,
        "same questions as okvqa",
        "cider",
        "generate",
        QG_PROMPT,
        LONG_DECODING,
    ),
    _spec(
        "aokvqa_qg",
        _QG,
        "held_in",
        "aokvqa",
        17_056,
        "same questions as aokvqa",
        "cider",
        "generate",
        QG_PROMPT,
        LONG_DECODING,
    ),
    _spec(
        "llava_conversation",
        "llava_instruct",
        "held_in",
        "llava_instruct",
        58_000,
        "LLaVA paper Sec. 3: 58K conversation samples (rounded)",
        "cider",
        "generate",
        "{}",
        LONG_DECODING,
    ),
    _spec(
        "llava_detail",
        "llava_instruct",
        "held_in",
        "llava_instruct",
        23_000,
        "LLaVA paper Sec. 3: 23K detailed descriptions (rounded)",
        "cider",
        "generate",
        "{}",
        LONG_DECODING,
    ),
    _spec(
        "llava_complex_reasoning",
        "llava_instruct",
        "held_in",
        "llava_instruct",
        77_000,
        "LLaVA paper Sec. 3: 77K complex reasoning samples (rounded)",
        "cider",
        "generate",
        "{}",
        LONG_DECODING,
    ),
    # ----- held-out ------------------------------------------------------------------------
    _spec(
        "nocaps",
        _C,
        "held_out",
        "nocaps",
        None,
        "no training split (val: 4,500 images)",
        "cider",
        "generate",
        CAPTION_PROMPT,
        CAPTION_DECODING,
        eval_split="val",
    ),
    _spec(
        "flickr30k",
        _C,
        "held_out",
        "flickr30k",
        145_000,
        "Karpathy train: 29,000 images x 5 captions",
        "cider",
        "generate",
        CAPTION_PROMPT,
        CAPTION_DECODING,
        eval_split="karpathy_test_1k",
    ),
    _spec(
        "gqa",
        _VR,
        "held_out",
        "gqa",
        943_000,
        "GQA balanced train, ~943K (Hudson 2019)",
        "exact_match",
        "generate",
        VQA_PROMPT,
        QA_DECODING,
        short_answer=True,
        eval_split="testdev_balanced",
    ),
    _spec(
        "vsr",
        _VR,
        "held_out",
        "vsr",
        None,
        "not recorded",
        "accuracy",
        "generate",
        'Based on the image, is this statement true or false? "{}" Answer:',
        QA_DECODING,
        eval_split="zeroshot_test",
    ),
    _spec(
        "iconqa",
        _VR,
        "held_out",
        "iconqa",
        None,
        "not recorded",
        "accuracy",
        "rank",
        MC_PROMPT,
        QA_DECODING,
        short_answer=True,
        eval_split="test",
    ),
    _spec(
        "vizwiz",
        _IQA,
        "held_out",
        "vizwiz",
        20_523,
        "VizWiz-VQA train (Gurari 2018)",
        "vqa_accuracy",
        "generate",
        VQA_PROMPT,
        QA_DECODING,
        short_answer=True,
        eval_split="test-dev",
    ),
    _spec(
        "scienceqa",
        _KQA,
        "held_out",
        "scienceqa",
        None,
        "not recorded (image subset of the 12,726-question train split)",
        "accuracy",
        "rank",
        "Context: {} Question: {} Options: {}. Answer:",
        QA_DECODING,
        eval_split="test_img",
    ),
    _spec(
        "textvqa",
        "image_qa_reading_comprehension",
        "held_out",
        "textvqa",
        34_602,
        "TextVQA 0.5.1 train (Singh 2019)",
        "vqa_accuracy",
        "generate",
        "OCR tokens: {}. Question: {} Short answer:",
        QA_DECODING,
        short_answer=True,
        ocr=True,
        eval_split="val",
    ),
    _spec(
        "msvd_qa",
        _VQA,
        "held_out",
        "msvd_qa",
        30_933,
        "MSVD-QA train (Xu 2017)",
        "exact_match",
        "rank",
        VQA_PROMPT,
        QA_DECODING,
        short_answer=True,
        is_video=True,
        eval_split="test",
    ),
    _spec(
        "msrvtt_qa",
        _VQA,
        "held_out",
        "msrvtt_qa",
        158_581,
        "MSRVTT-QA train (Xu 2017)",
        "exact_match",
        "rank",
        VQA_PROMPT,
        QA_DECODING,
        short_answer=True,
        is_video=True,
        eval_split="test",
    ),
    _spec(
        "ivqa",
        _VQA,
        "held_out",
        "ivqa",
        5_994,
        "iVQA train (Yang et al. 2021, Just Ask)",
        "ivqa_accuracy",
        "generate",
        VQA_PROMPT,
        QA_DECODING,
        short_answer=True,
        is_video=True,
        eval_split="test",
    ),
    _spec(
        "visdial",
        "visual_conversational_qa",
        "held_out",
        "visdial",
        1_232_870,
        "VisDial v1.0 train: 123,287 dialogs x 10 rounds",
        "mrr",
        "rank",
        "Dialog history: {}\n Question: {} Short answer:",
        QA_DECODING,
        eval_split="val",
    ),
    _spec(
        "hateful_memes",
        "image_classification",
        "held_out",
        "hateful_memes",
        8_500,
        "Hateful Memes train (Kiela 2020)",
        "auc",
        "rank",
        'This is an image with: "{}" written on it. Is it hateful? Answer:',
        QA_DECODING,
        eval_split="dev_seen",
    ),
    # ----- demo family (data_pipelines/demo_data.py writes these in the same public formats) -
    _spec(
        "demo_caption",
        _C,
        "demo",
        "coco_caption",
        None,
        "generated by demo_data.py",
        "cider",
        "generate",
        CAPTION_PROMPT,
        CAPTION_DECODING,
    ),
    _spec(
        "demo_vqa",
        _IQA,
        "demo",
        "vqav2",
        None,
        "generated by demo_data.py",
        "vqa_accuracy",
        "generate",
        VQA_PROMPT,
        QA_DECODING,
        short_answer=True,
    ),
    _spec(
        "demo_mc",
        _KQA,
        "demo",
        "aokvqa",
        None,
        "generated by demo_data.py",
        "accuracy",
        "rank",
        MC_PROMPT,
        QA_DECODING,
        short_answer=True,
    ),
    _spec(
        "demo_qg",
        _QG,
        "demo",
        "vqav2",
        None,
        "generated by demo_data.py",
        "cider",
        "generate",
        QG_PROMPT,
        LONG_DECODING,
    ),
]
REGISTRY: dict[str, DatasetSpec] = {spec.name: spec for spec in _SPECS}
assert len(REGISTRY) == len(_SPECS), "duplicate dataset name in the registry"

# The paper (Sec. 2.4) lowers A-OKVQA's weight (its multiple-choice task overfits) and raises
# OKVQA's, but does not publish the factors. Defaults stay neutral; pass the factors you use.
DEFAULT_MULTIPLIERS: dict[str, float] = {}


def get(name: str) -> DatasetSpec:
    """The spec of one dataset; a clear error naming the unknown one and listing the known."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown dataset '{name}'; known datasets: {sorted(REGISTRY)}") from None


def names() -> list[str]:
    return list(REGISTRY)


def held_in() -> list[str]:
    return [n for n, s in REGISTRY.items() if s.split == "held_in"]


def held_out() -> list[str]:
    return [n for n, s in REGISTRY.items() if s.split == "held_out"]


def demo() -> list[str]:
    return [n for n, s in REGISTRY.items() if s.split == "demo"]


def sampling_weights(
    names: Sequence[str],
    multipliers: Mapping[str, float] | None = None,
    sizes: Mapping[str, int] | None = None,
) -> dict[str, float]:
    """Mixing probabilities p_d ∝ sqrt(size_d) * multiplier_d, normalized to sum to 1.

    `sizes` overrides the registry's `num_train` (e.g. counts measured by the parsers; the demo
    datasets have no registry size). Unknown names in `multipliers`/`sizes` are an error, so a
    typo cannot silently leave a weight at its default.
    """
    if not names:
        raise ValueError("sampling_weights: no datasets given")
    names = list(names)
    mult = {**DEFAULT_MULTIPLIERS, **(multipliers or {})}
    sizes = dict(sizes or {})
    for label, table in (("multipliers", multipliers or {}), ("sizes", sizes)):
        stray = sorted(set(table) - set(names))
        if stray:
            raise ValueError(
                f"sampling_weights: {label} given for datasets not in the mixture: "
                f"{stray}; mixture: {names}"
            )
    raw = {}
    for name in names:
        size = sizes.get(name, get(name).num_train)
        if size is None or size <= 0:
            raise ValueError(
                f"sampling_weights: dataset '{name}' has no training size "
                f"(registry: {get(name).size_source}); pass sizes={{'{name}': N}}"
            )
        factor = mult.get(name, 1.0)
        if factor <= 0:  # a zero weight means a dataset that is listed but never sampled
            raise ValueError(
                f"sampling_weights: multiplier for '{name}' must be > 0, got "
                f"{factor}; drop the dataset from the mixture instead"
            )
        raw[name] = math.sqrt(size) * factor
    total = sum(raw.values())
    if total <= 0:
        raise ValueError(f"sampling_weights: all weights are zero for {names}")
    return {name: value / total for name, value in raw.items()}
