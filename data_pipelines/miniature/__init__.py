"""A miniature of the paper's 26 datasets, written in the layouts their authors publish.

`write_miniature(root, seed=0)` writes a handful of examples of every dataset of InstructBLIP's
Figure 2 under one `root`, with the published directory structure, file names and JSON / JSONL /
CSV layouts, real photographs (scikit-image's sample images) in the image modes the real sets
contain, multi-turn LLaVA conversations and real encoded video clips (AVI, MP4, WebM via PyAV).
It returns a manifest (see `writer.py`): per dataset its files, media and per-split example
counts, so a rehearsal can check that every example made it through. The whole tree is about
1 MB and takes a second or two.

    python -m data_pipelines.miniature --out=/tmp/miniature [--seed=0] [--frames] [--corrupt]

It also writes the demo tokenizers (data_pipelines/assets: a small WordPiece vocabulary and a
SentencePiece model) under `root/tokenizers/` with the released models' file names, where the
data configs look (`TOKENIZERS`): the miniature runs with configs/data_heldin.py,
configs/eval_heldout.py and the paper's run configs as they are. They are not the released
tokenizers: their ids fit the paper's vocabularies, their words do not.

Each dataset's writer documents the layout it reproduces and where it was checked (the dataset's
own repository, its loader code, or loaders that read the raw files); docs/DATASETS.md has the
table. What could not be checked is said there and in the writer. The question-generation
variants (vqav2_qg, okvqa_qg, aokvqa_qg) have no files of their own: the paper derives them from
VQAv2 / OK-VQA / A-OKVQA, so their manifest entries point at those files (`derived_from`).

`frames=True` also writes each video's frames as JPEG directories (`<dataset>/frames/<video
key>/00001.jpg ...`), the pre-extracted alternative. `corrupt=True` adds, to a few datasets
(writer.CORRUPTED), one unreadable media file and one malformed annotation entry, and lists them
under the manifest's "corrupted": the fault tests' input. The default output is clean.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from typing import Any

from data_pipelines import demo_data
from data_pipelines.miniature import captions, dialogs, reasoning, videoqa, vqa
from data_pipelines.miniature.writer import CORRUPTED, Miniature

# Writers in the order the paper lists the datasets; each registers the names it produces.
WRITERS: tuple[tuple[tuple[str, ...], Callable[[Miniature], None]], ...] = (
    (("coco_caption",), captions.coco_caption),
    (("web_capfilt",), captions.web_capfilt),
    (("textcaps",), captions.textcaps),
    (("vqav2", "vqav2_qg"), vqa.vqav2),
    (("okvqa", "okvqa_qg"), vqa.okvqa),
    (("aokvqa", "aokvqa_qg"), vqa.aokvqa),
    (("ocrvqa",), vqa.ocrvqa),
    (("llava_conversation", "llava_detail", "llava_complex_reasoning"), dialogs.llava),
    (("nocaps",), captions.nocaps),
    (("flickr30k",), captions.flickr30k),
    (("gqa",), vqa.gqa),
    (("vsr",), reasoning.vsr),
    (("iconqa",), reasoning.iconqa),
    (("textvqa",), vqa.textvqa),
    (("vizwiz",), vqa.vizwiz),
    (("scienceqa",), reasoning.scienceqa),
    (("msvd_qa",), videoqa.msvd_qa),
    (("msrvtt_qa",), videoqa.msrvtt_qa),
    (("ivqa",), videoqa.ivqa),
    (("visdial",), dialogs.visdial),
    (("hateful_memes",), reasoning.hateful_memes),
)
DATASETS: tuple[str, ...] = tuple(name for names, _ in WRITERS for name in names)

# ROOT/tokenizers/<name> as configs/data_heldin.py, eval_heldout.py and instructblip_vicuna*.py
# read them: the Q-Former's BERT vocabulary, FlanT5's and LLaMA's SentencePiece models.
TOKENIZERS: dict[str, str] = {
    "bert-base-uncased-vocab.txt": demo_data.DEMO_VOCAB,
    "spiece.model": demo_data.DEMO_SPM,
    "llama-tokenizer.model": demo_data.DEMO_SPM,
}

__all__ = ["CORRUPTED", "DATASETS", "TOKENIZERS", "write_miniature"]


def write_tokenizers(root: str) -> dict[str, str]:
    """Copy the demo tokenizers to `root/tokenizers/` (TOKENIZERS); returns {name: path}."""
    directory = os.path.join(root, "tokenizers")
    os.makedirs(directory, exist_ok=True)
    written = {}
    for name, source in TOKENIZERS.items():
        written[name] = shutil.copyfile(source, os.path.join(directory, name))
    return written


def write_miniature(
    root: str,
    seed: int = 0,
    *,
    corrupt: bool = False,
    frames: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write all 26 datasets under `root` and return the manifest.

    The same `seed` gives the same ids, texts and picture choices. `root` must be empty or absent
    unless `overwrite` (then it is deleted first), so stale files never mix into a run.
    """
    if os.path.exists(root) and os.listdir(root):
        if not overwrite:
            raise FileExistsError(
                f"{root} is not empty; pass overwrite=True (--overwrite) to replace it"
            )
        shutil.rmtree(root)
    os.makedirs(root, exist_ok=True)
    miniature = Miniature(root, seed, corrupt=corrupt, frames=frames)
    for names, writer in WRITERS:
        writer(miniature)
        missing = [n for n in names if n not in miniature.manifest["datasets"]]
        if missing:  # a writer that forgets to record would silently drop a dataset
            raise RuntimeError(f"{writer.__qualname__} did not record {missing}")
    manifest = miniature.finish()
    manifest["tokenizers"] = write_tokenizers(root)
    return manifest
