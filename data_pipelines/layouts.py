"""Where each of the paper's 26 datasets lies under one root, in the layouts their authors publish.

One table, `LAYOUTS[name][split]`, split "train" (finetuning / instruction tuning) or "eval" (the
split the paper reports); docs/DATASETS.md says per dataset which archives to download and where
they unpack. Paths are relative to the root; nothing is renamed. COCO's images are shared: one
`coco/images/` with COCO's own train2014/ val2014/ train2017/ val2017/ folders.

`entry(name, split, root, overrides=...)` gives the data-config entry (`name`, `split`,
`ann_path`, `image_root`, `parse_options`) that `data_pipelines.sources.load_records` reads;
`overrides` replace any of `ann_path` (a path or a "+"-joined list), `image_root`, or a parse
option (`split` included: ScienceQA's "test" split is a parse option, not the entry's "eval"), for
a dataset that lies elsewhere. `frames=True` points the video sets at pre-extracted frame folders
(`<dataset>/frames/<video key>/`) instead of the video files.

`parse_arg(arg, options)` reads a data config's `get_config` argument ("root=/data,batch=192,
scienceqa.split=val"): the config's own options (typed as their defaults) and per-dataset fields
(typed as the dataset's parser declares them: `ocrvqa.split=3` is the int 3); an unknown key or
field is refused, naming the closest known one.

| dataset | no such split |
|---|---|
| web_capfilt, llava_* | "eval": the sources publish no evaluation split |
| nocaps | "train": NoCaps has validation and test only |
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import os
from collections.abc import Mapping
from typing import Any

from data_pipelines import formats, registry


@dataclasses.dataclass(frozen=True)
class Split:
    """One split of a dataset: annotation file(s) and media folder relative to the root, parse
    options (values of `PATH_OPTIONS` are relative paths too), and the frame-folder alternative
    of a video set."""

    ann: str | tuple[str, ...]
    media: str
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    frames: str | None = None


PATH_OPTIONS = ("ocr_path", "mapping_path", "answer_vocab")
_COCO = "coco/images"


def _vqa(folder: str, prefix: str, subset: str) -> Split:
    """VQAv2 / OK-VQA: the questions file and the annotations file of one COCO 2014 subset."""
    return Split(
        (
            f"{folder}/{prefix}OpenEnded_mscoco_{subset}_questions.json",
            f"{folder}/{prefix}mscoco_{subset}_annotations.json",
        ),
        _COCO,
    )


_COCO_CAPTION = {
    "train": Split("coco/annotations/coco_karpathy_train.json", _COCO),
    "eval": Split("coco/annotations/coco_karpathy_test.json", _COCO),
}
_VQAV2 = {"train": _vqa("vqav2", "v2_", "train2014"), "eval": _vqa("vqav2", "v2_", "val2014")}
_OKVQA = {"train": _vqa("okvqa", "", "train2014"), "eval": _vqa("okvqa", "", "val2014")}
_AOKVQA = {
    "train": Split("aokvqa/aokvqa_v1p0_train.json", _COCO),
    "eval": Split("aokvqa/aokvqa_v1p0_val.json", _COCO),
}
_LLAVA = "LLaVA-Instruct-150K"


def _textvqa_family(folder: str, stem: str) -> dict[str, Split]:
    """TextVQA / TextCaps: annotations per split, the Rosetta OCR file beside them, train and
    val images both in train_images/."""
    return {
        split: Split(
            f"{folder}/{stem}_{name}.json",
            f"{folder}/train_images",
            {"ocr_path": f"{folder}/TextVQA_Rosetta_OCR_v0.2_{name}.json"},
        )
        for split, name in (("train", "train"), ("eval", "val"))
    }


def _video(folder: str, stem: str, media: dict[str, str], **options: Any) -> dict[str, Split]:
    """A video QA set: {train,test}_qa.json, the videos, frames under <folder>/frames."""
    return {
        split: Split(f"{folder}/{name}_qa.json", media[split], dict(options), f"{folder}/frames")
        for split, name in (("train", "train"), ("eval", "test"))
    }


LAYOUTS: dict[str, dict[str, Split]] = {
    # ----- held-in --------------------------------------------------------------------------
    "coco_caption": _COCO_CAPTION,
    "web_capfilt": {"train": Split("capfilt/ccs_synthetic_filtered_large.json", "capfilt/images")},
    "textcaps": _textvqa_family("textcaps", "TextCaps_0.1"),
    "vqav2": _VQAV2,
    "okvqa": _OKVQA,
    "aokvqa": _AOKVQA,
    "ocrvqa": {
        "train": Split("ocrvqa/dataset.json", "ocrvqa/images", {"split": "train"}),
        "eval": Split("ocrvqa/dataset.json", "ocrvqa/images", {"split": "test"}),
    },
    "vqav2_qg": _VQAV2,
    "okvqa_qg": _OKVQA,
    "aokvqa_qg": _AOKVQA,
    "llava_conversation": {"train": Split(f"{_LLAVA}/conversation_58k.json", f"{_COCO}/train2017")},
    "llava_detail": {"train": Split(f"{_LLAVA}/detail_23k.json", f"{_COCO}/train2017")},
    "llava_complex_reasoning": {
        "train": Split(f"{_LLAVA}/complex_reasoning_77k.json", f"{_COCO}/train2017")
    },
    # ----- held-out -------------------------------------------------------------------------
    "nocaps": {"eval": Split("nocaps/nocaps_val_4500_captions.json", "nocaps/validation")},
    "flickr30k": {
        split: Split("flickr30k/dataset_flickr30k.json", "flickr30k/flickr30k-images", {"split": s})
        for split, s in (("train", "train"), ("eval", "test"))
    },
    "gqa": {
        "train": Split("gqa/train_balanced_questions.json", "gqa/images"),
        "eval": Split("gqa/testdev_balanced_questions.json", "gqa/images"),
    },
    "vsr": {
        split: Split(f"vsr/splits/zeroshot/{name}.jsonl", "vsr/images")
        for split, name in (("train", "train"), ("eval", "test"))
    },
    # The paper reports IconQA's multiple-choice-with-text subset (choose_txt).
    "iconqa": {
        split: Split(
            "iconqa/iconqa_data/problems.json",
            "iconqa/iconqa_data/iconqa",
            {"split": name, "ques_types": ["choose_txt"]},
        )
        for split, name in (("train", "train"), ("eval", "test"))
    },
    "textvqa": _textvqa_family("textvqa", "TextVQA_0.5.1"),
    "vizwiz": {
        split: Split(f"vizwiz/Annotations/{name}.json", f"vizwiz/{name}")
        for split, name in (("train", "train"), ("eval", "val"))
    },
    "scienceqa": {
        split: Split("scienceqa/problems.json", "scienceqa/images", {"split": name})
        for split, name in (("train", "train"), ("eval", "test"))
    },
    # MSVD-QA / MSRVTT-QA rank the training split's answers (the reference implementations'
    # answer vocabularies: all 2,423 MSVD-QA answers, MSRVTT-QA's 1,500 most frequent).
    "msvd_qa": _video(
        "msvd",
        "msvd",
        {"train": "msvd/YouTubeClips", "eval": "msvd/YouTubeClips"},
        mapping_path="msvd/youtube_mapping.txt",
    ),
    "msrvtt_qa": _video(
        "msrvtt", "msrvtt", {"train": "msrvtt/TrainValVideo", "eval": "msrvtt/TestVideo"}
    ),
    "ivqa": {
        split: Split(f"ivqa/{name}.csv", "ivqa/videos", {}, "ivqa/frames")
        for split, name in (("train", "train"), ("eval", "test"))
    },
    "visdial": {
        "train": Split("visdial/visdial_1.0_train.json", _COCO),
        "eval": Split("visdial/visdial_1.0_val.json", "visdial/VisualDialog_val2018"),
    },
    "hateful_memes": {
        split: Split(f"hateful_memes/data/{name}.jsonl", "hateful_memes/data")
        for split, name in (("train", "train"), ("eval", "dev_seen"))
    },
}

# Eval-only parse options: the answer vocabulary the paper ranks, from the training split.
EVAL_OPTIONS: dict[str, dict[str, Any]] = {
    "msvd_qa": {"answer_vocab": "msvd/train_qa.json", "answer_vocab_size": None},
    "msrvtt_qa": {"answer_vocab": "msrvtt/train_qa.json", "answer_vocab_size": 1500},
}


def splits_of(name: str) -> list[str]:
    """The splits the table has for `name` ("train", "eval")."""
    if name not in LAYOUTS:
        raise KeyError(f"no published layout for dataset {name!r}; known: {sorted(LAYOUTS)}")
    return list(LAYOUTS[name])


def entry(
    name: str,
    split: str,
    root: str,
    *,
    frames: bool = False,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The data-config entry of dataset `name`, `split` "train" or "eval", under `root`.

    `overrides`: `ann_path` (absolute, or a "+"-joined list), `image_root`, or parse options
    (see `dataset_fields`); they replace the table's values. `frames`: video sets read
    `<dataset>/frames/` instead.
    """
    if split not in splits_of(name):
        raise KeyError(
            f"dataset {name!r} has no {split!r} split in the published layout "
            f"(it has {splits_of(name)}); give ann_path= and image_root= to use your own files"
        )
    layout = LAYOUTS[name][split]
    options = dict(layout.options)
    if split == "eval":
        options.update(EVAL_OPTIONS.get(name, {}))
    options = {
        k: os.path.join(root, v) if k in PATH_OPTIONS and isinstance(v, str) else v
        for k, v in options.items()
    }
    anns = [layout.ann] if isinstance(layout.ann, str) else list(layout.ann)
    media = layout.frames if frames and layout.frames else layout.media
    result: dict[str, Any] = {
        "name": name,
        "split": split,
        "ann_path": [os.path.join(root, a) for a in anns],
        "image_root": os.path.join(root, media),
        "parse_options": options,
    }
    for key, value in (overrides or {}).items():
        if key == "ann_path":
            result[key] = value.split("+") if isinstance(value, str) else list(value)
        elif key == "image_root":
            result[key] = value
        else:
            result["parse_options"][key] = value
    if len(result["ann_path"]) == 1:
        result["ann_path"] = result["ann_path"][0]
    return result


def dataset_fields(name: str) -> dict[str, str]:
    """{field: its type as the parser declares it} of what `<name>.<field>=` may set: ann_path,
    image_root and the options of the dataset's annotation parser."""
    fn = formats.PARSERS[registry.get(name).format].fn
    params = list(inspect.signature(fn).parameters.values())[3:]  # after ann_path, root, report
    fields = {"ann_path": "str", "image_root": "str"}
    fields.update({p.name: str(p.annotation) for p in params if p.kind is not p.VAR_KEYWORD})
    return fields


def _hint(name: str, known: list[str]) -> str:
    match = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _literal(value: str) -> Any:
    """ "3" -> 3, "0.5" -> 0.5, "true"/"false" -> bool, "none" -> None, else the string."""
    lowered = value.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def _typed_field(value: str, annotation: str) -> Any:
    """A command-line value as the parser's annotation (a string: `int | str | None`) wants it:
    a "+"-joined list for a Sequence, a number where a number is allowed, else the string."""
    if "Sequence" in annotation and ("+" in value or not annotation.startswith("str")):
        return value.split("+")
    if value.strip().lower() == "none" and "None" in annotation:
        return None
    typed = _literal(value)
    for kind, word in ((bool, "bool"), (int, "int"), (float, "float")):
        if type(typed) is kind and word in annotation:
            return typed
    if type(typed) is int and "float" in annotation:
        return float(typed)
    return value


def _typed_option(key: str, value: str, default: Any) -> Any:
    """A config option's value, typed as its default (bool: 1/0, true/false, yes/no)."""
    if isinstance(default, bool):
        lowered = value.strip().lower()
        if lowered not in ("1", "0", "true", "false", "yes", "no"):
            raise ValueError(f"config argument {key}={value!r}: expected true or false")
        return lowered in ("1", "true", "yes")
    if isinstance(default, (int, float)):
        try:
            return type(default)(value)
        except ValueError:
            raise ValueError(
                f"config argument {key}={value!r}: expected a {type(default).__name__}"
            ) from None
    return value if default is None or isinstance(default, str) else _literal(value)


def parse_arg(
    arg: str | None, options: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """A config's `get_config` argument "root=/data,batch=192,msvd_qa.image_root=/x" ->
    ({"root": "/data", "batch": 192, ...}, {"msvd_qa": {"image_root": "/x"}}): the config's own
    `options` (name -> default; every one present, typed as its default) and per-dataset fields
    (`<dataset>.<field>=value`, typed as `dataset_fields` says). Unknown keys are refused."""
    given: dict[str, Any] = dict(options)
    per_dataset: dict[str, dict[str, Any]] = {}
    for item in (arg or "").split(","):
        if not item.strip():
            continue
        if "=" not in item:
            raise ValueError(f"config argument {item!r} is not key=value (in {arg!r})")
        key, value = (part.strip() for part in item.split("=", 1))
        if "." in key:
            name, field = key.split(".", 1)
            splits_of(name)  # a typo in a dataset name is an error, not a silent no-op
            fields = dataset_fields(name)
            if field not in fields:
                raise ValueError(
                    f"config argument {key}=: {name} has no field {field!r}"
                    f"{_hint(field, list(fields))}; its fields: {', '.join(fields)}"
                )
            per_dataset.setdefault(name, {})[field] = _typed_field(value, fields[field])
        elif key in options:
            given[key] = _typed_option(key, value, options[key])
        else:
            raise ValueError(
                f"config argument {key}=: not an option{_hint(key, list(options))}; the options: "
                f"{', '.join(options)}, or <dataset>.<field>=value"
            )
    return given, per_dataset
