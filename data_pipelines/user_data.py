"""Your own data as a dataset of the run: config entries and the spec the pipelines read them with.

A user entry is a data-config entry like the 26 datasets' (`name`, `split`, `ann_path`,
`image_root`, `parse_options`), read by the `user` format (data_pipelines/formats/user.py), plus
`user={"task", "template"}`, from which `spec(entry)` builds its `DatasetSpec` (the registry rows
are the paper's datasets; users' names must not collide with them).

`task` (TASKS) picks what the data trains as: `vqa` (short answers), `caption`, `choice`
(choices; the answer is one of them), `open` (free-form answers); how each task is evaluated
(metric, generate or rank, decoding) is declared by the run config (configs/evals.py
`USER_TASKS`). `template`: empty (the default) uses each row's instruction verbatim, in training and
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
from data_pipelines.specs import DatasetSpec

CAPTION_PROMPT = "A short image description:"  # a caption row's instruction when it has none

VERBATIM = "llava_instruct"  # the category whose instruction is the row's own text


@dataclasses.dataclass(frozen=True)
class Task:
    """What a kind of user data trains on (how it is evaluated: configs/evals.py USER_TASKS)."""

    category: str  # the template family of `template=` (and of the default zero-shot prompt)
    short_answer: bool = True


TASKS: dict[str, Task] = {
    "vqa": Task("image_question_answering"),
    "caption": Task("image_captioning", False),
    "choice": Task("knowledge_grounded_image_qa"),
    "open": Task(VERBATIM, False),
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
    return DatasetSpec(
        name=str(entry["name"]),
        task_category=template or VERBATIM,
        split="held_in",
        format="user",
        num_train=None,
        size_source="your data (measured when read)",
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
    task(task_name)  # a clear error for an unknown task, before any file is read
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
        user=dict(task=task_name, template=template),
    )
    if multiplier is not None:
        result["multiplier"] = float(multiplier)
    return result
