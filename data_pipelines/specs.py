"""What a registry row is: `DatasetSpec` and its task categories.

The rows themselves (the paper's 26 datasets and the demo family) are in `registry`.
"""

from __future__ import annotations

import dataclasses

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


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """One dataset: how to parse it and how to instruct with it (its evaluation is declared by
    the run config, configs/evals.py)."""

    name: str
    task_category: str  # one of TASK_CATEGORIES
    split: str  # "held_in" | "held_out" | "demo"
    format: str  # key into data_pipelines.formats.PARSERS
    num_train: int | None  # public training split size (see the registry's docstring)
    size_source: str  # where num_train comes from
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
