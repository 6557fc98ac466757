"""The evaluation pipeline: every example of one eval split, once, in order, as padded batches.

Each process reads the records `process_index::process_count` and pads its last batch (and, when
the split does not divide evenly, adds whole padding batches) so that every process yields the
same number of batches: collective evaluation steps then stay in lockstep across hosts. Padding
rows repeat a real record with `valid=0`, so their arrays are well formed and the metrics skip
them. An unreadable image becomes zeros with `meta["error"]` and stays in the denominator, so a
broken file counts as a wrong answer rather than silently raising the score.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import grain
import numpy as np

from data_pipelines import images, sources, templates
from data_pipelines.preprocess import (
    BadDataError,
    ExamplePreprocessor,
    local_batch_size,
    multiprocessing_options,
    setting,
)
from data_pipelines.specs import DatasetSpec

logger = logging.getLogger(__name__)

# Record fields passed through to the evaluators (host side, per example).
META_FIELDS = (
    "id",
    "question",
    "answers",
    "captions",
    "choices",
    "answer_index",
    "label",
    "ocr_tokens",
    "text",
    "gt_index",
    "answer_options",
    "dialog",
)


# Task categories whose target text is the CIDEr reference: record -> reference texts.
_TARGET_AS_REFERENCE = {
    "image_question_generation": lambda record: [record["question"]],
    "llava_instruct": lambda record: record.get("answers", []),
}


# The slots an evaluation's prompt may name (`config.evals.<name>.prompt`, configs/evals.py).
PROMPT_SLOTS = ("question", "options", "ocr", "text", "dialog", "answer", "instruction")
# The prompt of an eval split read without a declared evaluation: the record's own instruction.
DEFAULT_PROMPT = "{instruction}"


def ocr_text(record: Mapping[str, Any]) -> str:
    """The OCR tokens of a record as the prompt's {ocr} slot shows them (templates.ocr_text:
    the first 30, ", "-joined, as LAVIS and the training instructions)."""
    return templates.ocr_text(record.get("ocr_tokens"))


def _slots(spec: DatasetSpec, record: Mapping[str, Any]) -> dict[str, str]:
    """Every prompt slot's text for one record."""
    if spec.task_category == "llava_instruct":  # LLaVA's own question, after the earlier turns
        instruction = templates.llava_instruction(record)
    else:
        instruction = record.get("instruction") or record.get("question") or record.get("text", "")
    answers = record.get("answers") or []
    if not answers and record.get("choices"):
        answers = [record["choices"][record.get("answer_index", 0)]]
    return {
        "question": record.get("question", ""),
        "options": ", ".join(record.get("choices", [])),
        "ocr": ocr_text(record),
        "text": record.get("text", ""),
        "dialog": " ".join(f"{q} {a}." for q, a in record.get("dialog", [])),
        "answer": answers[0] if answers else "",
        "instruction": instruction,
    }


def eval_instruction(prompt: str, spec: DatasetSpec, record: Mapping[str, Any]) -> str:
    """An evaluation's prompt (named slots, PROMPT_SLOTS) filled from the record."""
    try:
        return prompt.format_map(_slots(spec, record))
    except (KeyError, IndexError) as error:
        raise ValueError(
            f"eval prompt {prompt!r} of dataset {spec.name!r} names slot {error}; the slots are "
            f"{{{'}, {'.join(PROMPT_SLOTS)}}}"
        ) from None


class _EvalExample:
    """Index -> (arrays, meta). Padding indices (>= the shard's size) repeat a real example with
    valid=0. Bad images become zeros with meta["error"], kept in the denominator (valid=1)."""

    def __init__(
        self,
        data_config,
        spec,
        records: grain.MapDataset,
        pad_record: Mapping[str, Any],
        prompt: str,
    ):
        self.pre = ExamplePreprocessor(data_config, spec, train=False)
        self.spec = spec
        self.prompt = prompt
        self.records = records
        self.pad_record = pad_record  # a real record, so padding rows have well-formed arrays

    def __call__(self, index: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        valid = index < len(self.records)
        record = self.records[index] if valid else self.pad_record
        meta = {k: record[k] for k in META_FIELDS if k in record}
        meta["dataset"] = self.spec.name
        if self.spec.task_category in _TARGET_AS_REFERENCE and "captions" not in meta:
            # Free-text targets are scored like captions (CIDEr): the question to generate, or
            # LLaVA's answer, is the reference.
            meta["captions"] = list(_TARGET_AS_REFERENCE[self.spec.task_category](record))
        try:
            pixels = self.pre.pixels(record, None)
        except images.BadImageError as error:
            shape = ((self.pre.num_frames,) if self.pre.is_video(record) else ()) + (
                self.pre.image_size,
                self.pre.image_size,
                3,
            )
            pixels, meta["error"] = np.zeros(shape, np.float32), str(error)
        instruction = eval_instruction(self.prompt, self.spec, record)
        meta["instruction"] = instruction
        arrays = {
            "pixel_values": pixels,
            **self.pre.tokenize(instruction, None),
            "valid": np.int32(valid),
        }
        return arrays, meta


def _eval_batch(elements: Sequence[tuple[dict, dict]]) -> dict[str, Any]:
    """Stacks the arrays; meta becomes a dict of per-example lists (host side, not for jit)."""
    batch = {k: np.stack([a[k] for a, _ in elements]) for k in elements[0][0]}
    keys = sorted({k for _, m in elements for k in m})
    batch["meta"] = {k: [m.get(k) for _, m in elements] for k in keys}
    return batch


def find_eval_entry(data_config: Mapping[str, Any], dataset_name: str, split: str) -> Mapping:
    """The `eval_datasets` entry with this name and split (split defaults to "eval")."""
    entries = list(setting(data_config, "eval_datasets"))
    for entry in entries:
        if entry.get("name") == dataset_name and entry.get("split", "eval") == split:
            return entry
    known = [(e.get("name"), e.get("split", "eval")) for e in entries]
    raise KeyError(
        f"no eval dataset {dataset_name!r} split {split!r} in data_config.eval_datasets; "
        f"configured: {known}"
    )


def build_eval_dataset(
    data_config: Mapping[str, Any],
    dataset_name: str,
    split: str,
    *,
    process_index: int = 0,
    process_count: int = 1,
    prompt: str = DEFAULT_PROMPT,
    batch_size: int = 0,
) -> Iterator[dict[str, Any]]:
    """Every example of one eval split, once, in order, as padded batches.

    Batch: the CONTRACTS.md arrays without `labels` (pixel_values [B, H, W, 3] or
    [B, F, H, W, 3], ids/masks [B, L] int32), plus `valid` int32 [B] (0 on padding) and
    host-side `meta` (lists of length B: id, question, answers, captions, choices, answer_index,
    label, instruction, dataset, error...). Every process yields the same number of batches
    (`ceil(ceil(N / process_count) / B)`), so collective eval steps stay in lockstep.
    Batch size: `batch_size`, else `eval_batch_size` (default `global_batch_size`), over
    process_count. `prompt`: the evaluation's instruction with named slots (`eval_instruction`).
    """
    entry = find_eval_entry(data_config, dataset_name, split)
    spec = sources.resolve_spec(entry)
    max_bad_fraction = float(setting(data_config, "max_bad_fraction"))
    records = sources.load_records(entry, max_bad_fraction)
    global_batch = (
        batch_size or setting(data_config, "eval_batch_size") or data_config["global_batch_size"]
    )
    batch_size = local_batch_size(int(global_batch), process_count)
    per_process = math.ceil(len(records) / process_count)
    num_batches = math.ceil(per_process / batch_size)
    shard = grain.MapDataset.source(records)[process_index::process_count]
    # Indices past the shard's end are padding (valid=0); a shard may even be empty when there
    # are more processes than records, so the padding record comes from the whole split.
    indices = grain.MapDataset.range(num_batches * batch_size)
    dataset = indices.map(_EvalExample(data_config, spec, shard, records[0], prompt)).batch(
        batch_size, batch_fn=_eval_batch
    )
    stream = dataset.to_iter_dataset()
    options = multiprocessing_options(data_config)
    if options is not None:
        stream = stream.mp_prefetch(options)
    return _count_eval_errors(stream, max_bad_fraction, len(records) // process_count or 1)


def _count_eval_errors(stream, max_bad_fraction: float, expected: int) -> Iterator[dict]:
    """Passes batches through, stopping once unreadable images pass the bad fraction."""
    bad = 0
    for batch in stream:
        for valid, error in zip(
            batch["valid"], batch["meta"].get("error", [None] * len(batch["valid"]))
        ):
            if valid and error:
                bad += 1
                logger.warning("eval example with unreadable image (%d so far): %s", bad, error)
                if bad > max_bad_fraction * expected:
                    raise BadDataError(
                        f"{bad} eval examples had unreadable images, more than "
                        f"max_bad_fraction={max_bad_fraction} of {expected}; last: {error}"
                    )
        yield batch
