"""Your own data as a dataset of the run: config entries and the spec the pipelines read them with.

A user entry is a data-config entry like the 26 datasets' (`name`, `split`, `ann_path`,
`image_root`, `parse_options`), read by the `user` format (data_pipelines/formats/user.py), plus
`user={"task", "template"}`, from which `spec(entry)` builds its `DatasetSpec` (the registry rows
are the paper's datasets; users' names must not collide with them).

`task` picks the metric, eval mode and decoding (TASKS): `vqa` (exact match of the normalized
answer, LAVIS's short-answer beam search), `caption` (CIDEr, caption decoding), `choice`
(accuracy, the record's choices ranked by likelihood), `open` (free-form answers: CIDEr, long
decoding). `template`: empty (the default) uses each row's instruction verbatim, in training and
evaluation alike (with a conversation's earlier turns in front, as LLaVA's); a task category
(data_pipelines/templates.py) samples the paper's templates for it in training and evaluates with
that category's zero-shot prompt. In the verbatim mode the training target is the row's first
answer (or the chosen choice).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from data_pipelines import registry, templates
from data_pipelines.formats import user
from data_pipelines.specs import (
    CAPTION_DECODING,
    CAPTION_PROMPT,
    LONG_DECODING,
    MC_PROMPT,
    QA_DECODING,
    VQA_PROMPT,
    DatasetSpec,
    Decoding,
)

VERBATIM = "llava_instruct"  # the category whose instruction is the row's own text


@dataclasses.dataclass(frozen=True)
class Task:
    """What a kind of user data is scored with and how its answers are decoded."""

    metric: str
    eval_mode: str
    decoding: Decoding
    category: str  # the template family of `template=` (a default for the zero-shot prompt)
    prompt: str  # the zero-shot prompt in template mode ("{}" slots as the registry's)
    short_answer: bool = True


TASKS: dict[str, Task] = {
    "vqa": Task("exact_match", "generate", QA_DECODING, "image_question_answering", VQA_PROMPT),
    "caption": Task(
        "cider", "generate", CAPTION_DECODING, "image_captioning", CAPTION_PROMPT, False
    ),
    "choice": Task("accuracy", "rank", QA_DECODING, "knowledge_grounded_image_qa", MC_PROMPT),
    "open": Task("cider", "generate", LONG_DECODING, VERBATIM, "{}", False),
}


def task(name: str) -> Task:
    """The Task named `name`; a clear error listing the known ones."""
    if name not in TASKS:
        raise ValueError(f"task={name!r} is not one of {sorted(TASKS)}")
    return TASKS[name]


def is_user(entry: Mapping[str, Any]) -> bool:
    """Whether a data-config entry is the user's own data (has a `user` section)."""
    return bool(entry.get("user"))


def spec(entry: Mapping[str, Any]) -> DatasetSpec:
    """The DatasetSpec of a user entry: its name, the task's metric/mode/decoding, and the
    category whose instructions it trains on (the row's own text unless `template` is set)."""
    options = entry["user"]
    chosen = task(str(options.get("task") or "vqa"))
    template = str(options.get("template") or "")
    if template and template not in templates.TEMPLATES:
        raise ValueError(
            f"template={template!r} is not a task category: {sorted(templates.TEMPLATES)}"
        )
    prompt = chosen.prompt if template and template != VERBATIM else "{}"
    if template and "caption" in template:
        prompt = CAPTION_PROMPT
    return DatasetSpec(
        name=str(entry["name"]),
        task_category=template or VERBATIM,
        split="held_in",
        format="user",
        num_train=None,
        size_source="your data (measured when read)",
        metric=chosen.metric,
        eval_mode=chosen.eval_mode,
        eval_prompt=prompt,
        decoding=chosen.decoding,
        short_answer=chosen.short_answer,
    )


def check_name(name: str) -> str:
    """A user dataset's name: never one of the registry's (its TFDS output, metrics and
    predictions are keyed by it)."""
    if not name or name in registry.REGISTRY:
        raise ValueError(
            f"name={name!r}: your dataset needs a name of its own, not one of the paper's "
            f"datasets ({', '.join(registry.names())})"
        )
    return name


def entry(
    name: str,
    paths: str | list[str],
    split: str = "train",
    *,
    task_name: str = "vqa",
    template: str = "",
    images: str | None = None,
    columns: Mapping[str, str] | str | None = None,
    multiplier: float | None = None,
    **parse_options: Any,
) -> dict[str, Any]:
    """The data-config entry of the user's files `paths` (a path, "+"-joined paths or a list)."""
    chosen = task(task_name)
    ann = user.split_paths(paths)
    if not ann:
        raise ValueError(f"dataset {name!r} ({split}): no annotation path given")
    first = os.path.abspath(ann[0])
    options: dict[str, Any] = dict(parse_options)
    if images:
        options["images"] = str(images)
    if columns:
        options["columns"] = columns if isinstance(columns, str) else dict(columns)
    if task_name == "caption":
        options.update(captions=True, default_instruction=CAPTION_PROMPT)
    result: dict[str, Any] = dict(
        name=check_name(name),
        split=split,
        ann_path=[os.path.abspath(p) if "://" not in p else p for p in ann],
        # The user format resolves images itself (each file's folder or `images`); the entry's
        # image_root is only the folder the start-up checks expect to exist.
        image_root=first if os.path.isdir(first) else os.path.dirname(first),
        parse_options=options,
        user=dict(task=task_name, template=template, metric=chosen.metric),
    )
    if multiplier is not None:
        result["multiplier"] = float(multiplier)
    return result
