"""How many records the parsers should give for a miniature split: the manifest's counts in the
parsers' units.

The manifest counts what the published files hold, in each dataset's own unit (captions,
questions, conversations, problems...); the parsers yield one record per image for captioning
(all its captions together), one per turn for LLaVA, only IconQA's choose_txt problems for the
paper's subset. `expected_records` converts, so a rehearsal can check that no example was lost.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# The manifest's split name of each dataset's "eval" split (data_pipelines.layouts); "train" is
# "train" everywhere.
EVAL_SPLITS = {
    "coco_caption": "test",
    "textcaps": "val",
    "vqav2": "val",
    "okvqa": "val",
    "aokvqa": "val",
    "ocrvqa": "test",
    "vqav2_qg": "val",
    "okvqa_qg": "val",
    "aokvqa_qg": "val",
    "nocaps": "val",
    "flickr30k": "test",
    "gqa": "testdev",
    "vsr": "test",
    "iconqa": "test",
    "textvqa": "val",
    "vizwiz": "val",
    "scienceqa": "test",
    "msvd_qa": "test",
    "msrvtt_qa": "test",
    "ivqa": "test",
    "visdial": "val",
    "hateful_memes": "dev_seen",
}
# Datasets whose parser yields another unit than the manifest counts: the manifest key to read.
_RECORD_UNIT = {"caption": "images", "conversation": "turns"}
_SUBSET = {"iconqa": "choose_txt"}  # the paper's IconQA subset (layouts: ques_types)


def manifest_split(dataset: str, split: str) -> str:
    """The manifest's split name for a layouts split ("train" or "eval") of `dataset`."""
    if split == "train":
        return "train"
    if dataset not in EVAL_SPLITS:
        raise KeyError(f"the miniature has no eval split for {dataset!r}")
    return EVAL_SPLITS[dataset]


def expected_records(manifest: Mapping[str, Any], dataset: str, split: str) -> int:
    """The number of well-formed records the parser yields for `dataset`'s `split`."""
    entry = manifest["datasets"][dataset]["splits"][manifest_split(dataset, split)]
    if dataset in _SUBSET:
        return int(entry[_SUBSET[dataset]])
    return int(entry.get(_RECORD_UNIT.get(entry["unit"], "examples"), entry["examples"]))


def expected_faults(manifest: Mapping[str, Any], dataset: str, split: str) -> tuple[int, int]:
    """(unreadable media files, malformed entries) written on purpose into the split."""
    entry = manifest["datasets"][dataset]["splits"][manifest_split(dataset, split)]
    return len(entry["unreadable"]), int(entry["malformed"])
