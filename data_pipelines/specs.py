"""What a registry row is: `DatasetSpec`, its decoding settings, task categories and prompts.

The rows themselves (the paper's 26 datasets and the demo family) are in `registry`.
"""

from __future__ import annotations

import dataclasses

from ib_jax.contract.metrics import METRIC_NAMES

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
SPLITS = ("held_in", "held_out", "demo")
EVAL_MODES = ("generate", "rank")


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

# Zero-shot prompts (paper appendix / LAVIS). Slot order: question first, then options/OCR etc.
VQA_PROMPT = "Question: {} Short answer:"
CAPTION_PROMPT = "A short image description:"
MC_PROMPT = "Question: {} Options: {}. Short answer:"  # slots: question, options
QG_PROMPT = "Given the image, generate a question whose answer is: {}. Question:"


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """One dataset: how to parse it, how to instruct with it, and how the paper evaluates it."""

    name: str
    task_category: str  # one of TASK_CATEGORIES
    split: str  # "held_in" | "held_out" | "demo"
    format: str  # key into data_pipelines.formats.PARSERS
    num_train: int | None  # public training split size (see the registry's docstring)
    size_source: str  # where num_train comes from
    metric: str  # one of ib_jax.contract.metrics.METRIC_NAMES
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
        if self.split not in SPLITS:
            raise ValueError(
                f"dataset '{self.name}': split must be held_in/held_out/demo, got '{self.split}'"
            )
        if self.metric not in METRIC_NAMES:
            raise ValueError(f"dataset '{self.name}': unknown metric '{self.metric}'")
        if self.eval_mode not in EVAL_MODES:
            raise ValueError(f"dataset '{self.name}': eval_mode must be generate/rank")
