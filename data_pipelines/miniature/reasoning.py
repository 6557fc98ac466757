"""Reasoning and classification datasets in their published layouts: VSR, IconQA, ScienceQA,
HatefulMemes."""

from __future__ import annotations

from data_pipelines.miniature import photos
from data_pipelines.miniature.writer import Miniature, split


def vsr(m: Miniature) -> None:
    """Visual Spatial Reasoning (cambridgeltl/visual-spatial-reasoning, data/).

    vsr/splits/zeroshot/{train,dev,test}.jsonl  one object a line: {"image": "<12 digits>.jpg",
        "image_link", "caption", "label": 0|1, "relation", "subj", "obj", "annotator_id",
        "vote_true_validator_id", "vote_false_validator_id"} (the vote lists are strings like
        "[2, 6]" in the split files).
    vsr/images/<image>  COCO 2017 train/val images copied into one folder (data/README.md).
    Verified: the repo's data/README.md and data/splits/zeroshot/test.jsonl. The repo's data/
    folder is vsr/ here.
    """
    others = [p.noun for p in photos.PHOTOS]
    splits = {}
    for name, count in (("train", 3), ("dev", 2), ("test", 4)):
        rows = []
        for index in range(count):
            image = f"{m.unique_id('coco2017', 9, 581930):012d}.jpg"
            photo = m.photo("vsr", f"vsr/images/{image}", "RGB")
            other = others[(others.index(photo.noun) + 3) % len(others)]
            true = index % 2 == 0  # both labels in every split
            relation = "in the middle of" if true else "on top of"
            obj = "picture" if true else other
            rows.append(
                {
                    "image": image,
                    "image_link": f"http://images.cocodataset.org/train2017/{image}",
                    "caption": f"The {photo.noun} is {relation} the {obj}.",
                    "label": int(true),
                    "relation": relation,
                    "subj": photo.noun,
                    "obj": obj,
                    "annotator_id": int(m.rng.integers(0, 60)),
                    "vote_true_validator_id": "[2, 6]" if true else "[]",
                    "vote_false_validator_id": "[]" if true else "[1, 9]",
                }
            )
        path = m.write_jsonl(f"vsr/splits/zeroshot/{name}.jsonl", rows)
        splits[name] = split(path, count, "pair", images=count)
    m.record(
        "vsr", "out", "cambridgeltl/visual-spatial-reasoning data/README.md and splits", splits
    )


_ICONQA_TASKS = ("choose_txt", "choose_img", "fill_in_blank")
_ICONQA_NAMES = ("train", "val", "test", "trainval", "minitrain", "minival", "minitest")


def iconqa(m: Miniature) -> None:
    """IconQA (lupantech/IconQA; iconqa_data.zip unzipped).

    iconqa/iconqa_data/problems.json  {"<pid>": {"question", "choices" (choose_txt: texts;
        choose_img: image file names in the pid folder; absent for fill_in_blank), "answer"
        (choice index, or the text of a fill_in_blank answer), "ques_type", "split"}}.
    iconqa/iconqa_data/pid_splits.json  {"<ques_type>_<split>": [pid, ...]} for the 3 types and
        train/val/test/trainval/minitrain/minival/minitest.
    iconqa/iconqa_data/iconqa/<split>/<ques_type>/<pid>/image.png (+ choice_<k>.png).
    The paper reports the multi-text-choice subset; every type is written so a loader can be
    seen to pick it. Verified: the repo's README (tree), run_*/dataset.py, tools/
    generate_img_{patch,choice}_feature.py (keys read, image paths). Not verified: further keys
    of problems.json (e.g. grade, label) are not written.
    """
    problems, pid_splits = {}, {f"{t}_{n}": [] for t in _ICONQA_TASKS for n in _ICONQA_NAMES}
    plan = [("train", "choose_txt"), ("train", "choose_txt"), ("train", "fill_in_blank")]
    plan += [("test", "choose_txt")] * 3 + [("test", "choose_img"), ("test", "fill_in_blank")]
    nouns = [p.noun for p in photos.PHOTOS]
    counts: dict[tuple[str, str], int] = {}
    for index, (name, task) in enumerate(plan):
        pid = str(m.unique_id("iconqa", 1, 110000))
        folder = f"iconqa/iconqa_data/iconqa/{name}/{task}/{pid}"
        photo = m.photo("iconqa", f"{folder}/image.png", ("RGBA", "P", "RGB")[index % 3])
        problem = {"question": "What is shown in the picture?", "ques_type": task, "split": name}
        if task == "fill_in_blank":
            problem.update(question="How many pictures are there? _", answer="1")
        elif task == "choose_txt":
            choices = [photo.noun, nouns[(nouns.index(photo.noun) + 5) % len(nouns)]]
            answer = index % 2
            choices.insert(answer, choices.pop(0))
            problem.update(choices=choices, answer=answer)
        else:
            choices = [f"choice_{k}.png" for k in range(2)]
            m.photo("iconqa", f"{folder}/choice_0.png", "RGBA", photo=photo, size=32)
            m.photo("iconqa", f"{folder}/choice_1.png", "RGBA", size=32)
            problem.update(question="Which picture matches?", choices=choices, answer=0)
        problems[pid] = problem
        for key in (f"{task}_{name}", f"{task}_trainval" if name != "test" else None):
            if key:
                pid_splits[key].append(pid)
        counts[name, task] = counts.get((name, task), 0) + 1
    path = m.write_json("iconqa/iconqa_data/problems.json", problems)
    pid_path = m.write_json("iconqa/iconqa_data/pid_splits.json", pid_splits)
    splits = {
        name: split(
            [path, pid_path],
            sum(c for (n, _), c in counts.items() if n == name),
            "problem",
            **{t: counts.get((name, t), 0) for t in _ICONQA_TASKS},
        )
        for name in ("train", "test")
    }
    m.record(
        "iconqa", "out", "lupantech/IconQA README, run_*/dataset.py, tools/generate_img_*", splits
    )


def scienceqa(m: Miniature) -> None:
    """ScienceQA (lupantech/ScienceQA: data/scienceqa/ and tools/download.sh).

    scienceqa/problems.json  {"<pid>": {"question", "choices", "answer" (index), "hint" (the
        textual context, may be ""), "image": "image.png" or null, "task", "grade", "subject",
        "topic", "category", "skill", "lecture", "solution", "split"}}.
    scienceqa/pid_splits.json  {"train", "val", "test", "trainval", "minitrain", "minival",
        "minitest": [pid, ...]}.
    scienceqa/images/<split>/<pid>/image.png  (download.sh unzips {train,val,test}.zip inside
        data/scienceqa/images). Problems without an image (ScienceQA-IMG leaves them out) are
        written too: `skipped` counts them.
    Verified: the README's problems.json format, pid_splits.json's keys, download.sh.
    """
    problems, pid_splits = (
        {},
        {k: [] for k in ("train", "val", "test", "trainval", "minitrain", "minival", "minitest")},
    )
    nouns, corrupt, splits = [p.noun for p in photos.PHOTOS], m.corrupts("scienceqa"), {}
    for name, with_image in (("train", 3), ("test", 4)):
        for index in range(with_image + 1):
            pid = str(m.unique_id("scienceqa", 1, 21209))
            has_image = index < with_image
            photo = m.next_photo()
            if has_image:
                relative = f"scienceqa/images/{name}/{pid}/image.png"
                m.photo("scienceqa", relative, ("RGB", "RGBA", "P")[index % 3], photo=photo)
                if corrupt and name == "test" and index == 0:
                    m.break_media("scienceqa", "test", relative)
            choices = [photo.noun, nouns[(nouns.index(photo.noun) + 4) % len(nouns)]]
            problems[pid] = {
                "question": "Which of these is shown in the picture?"
                if has_image
                else f"Which word is a {photo.noun}?",
                "choices": choices,
                "answer": 0,
                "hint": "" if index == 1 else f"Figure: {photo.noun}.",
                "image": "image.png" if has_image else None,
                "task": "closed choice",
                "grade": "grade2",
                "subject": "natural science",
                "topic": "science-and-engineering-practices",
                "category": "Identify objects",
                "skill": "Identify objects in pictures",
                "lecture": "Look at the picture carefully.",
                "solution": f"The picture shows a {photo.noun}.",
                "split": name,
            }
            pid_splits[name].append(pid)
            pid_splits["trainval" if name == "train" else "minitest"].append(pid)
        splits[name] = split(
            ["scienceqa/problems.json", "scienceqa/pid_splits.json"],
            with_image,
            "problem",
            skipped=1,
        )
    if corrupt:
        problems["99999"] = {**problems[pid_splits["test"][1]], "answer": 7}
        pid_splits["test"].append("99999")
        m.malformed(
            "scienceqa",
            "test",
            "scienceqa/problems.json",
            "key '99999'",
            "answer 7 outside the 2 choices",
        )
    m.write_json("scienceqa/problems.json", problems)
    m.write_json("scienceqa/pid_splits.json", pid_splits)
    m.record(
        "scienceqa", "out", "lupantech/ScienceQA README, pid_splits.json, tools/download.sh", splits
    )


_MEME_TEXTS = (
    "when the coffee finally kicks in",
    "me explaining my weekend plans to my cat",
    "nobody: the moon at 3 am",
    "that face when the rocket launch is delayed again",
    "when you see the checkerboard floor and start walking only on black",
    "mondays be like",
)


def hateful_memes(m: Miniature) -> None:
    """Hateful Memes (the DrivenData zip; facebookresearch/mmf mmf_cli/hm_convert.py lists it).

    hateful_memes/data/{train,dev_seen,dev_unseen}.jsonl  {"id": int, "img": "img/<5 digits>.png",
        "label": 0|1, "text": str} a line (phase 2 names; phase 1 shipped dev.jsonl/test.jsonl).
    hateful_memes/data/img/<5 digits>.png
    The miniature's texts are harmless and its labels arbitrary (both classes in every split, as
    AUC needs). Verified: mmf's hm_convert.py (files in the zip's data/ folder) and its
    defaults.yaml (jsonl names). Not verified: the PNG modes of the real images (RGB and RGBA
    written).
    """
    splits, corrupt = {}, m.corrupts("hateful_memes")
    for name, count in (("train", 3), ("dev_seen", 4), ("dev_unseen", 2)):
        rows: list = []
        for index in range(count):
            meme_id = m.unique_id("hateful_memes", 1000, 99999)
            relative = f"img/{meme_id:05d}.png"
            m.photo("hateful_memes", f"hateful_memes/data/{relative}", ("RGB", "RGBA")[index % 2])
            if corrupt and name == "dev_seen" and index == 0:
                m.break_media("hateful_memes", name, f"hateful_memes/data/{relative}")
            text = _MEME_TEXTS[int(m.rng.integers(0, len(_MEME_TEXTS)))]
            rows.append({"id": meme_id, "img": relative, "label": index % 2, "text": text})
        path = f"hateful_memes/data/{name}.jsonl"
        if corrupt and name == "dev_seen":
            rows.insert(2, '{"id": 4242, "img": "img/04242.png", "label": 1, "text": "cut off')
            m.malformed("hateful_memes", name, path, "line 3", "invalid JSON")
        m.write_jsonl(path, rows)
        splits[name] = split(path, count, "meme", images=count)
    m.record(
        "hateful_memes",
        "out",
        "facebookresearch/mmf mmf_cli/hm_convert.py, hateful_memes defaults.yaml",
        splits,
    )
