"""Question-answering datasets in their published layouts: VQAv2, OK-VQA, A-OKVQA (and the three
question-generation variants built from them), OCR-VQA, GQA, VizWiz, TextVQA."""

from __future__ import annotations

from data_pipelines.miniature import photos
from data_pipelines.miniature.captions import COCO_IMAGES, coco_image, rosetta_ocr
from data_pipelines.miniature.writer import Miniature, split

_VQA_TYPES = (
    "what color is the",
    "what is the",
    "how many",
    "is there a",
    "is this",
    "is the",
    "what",
    "is",
)
_QG_NOTE = (
    "derived: the paper builds question generation from {0}'s own files (answer -> question); "
    "there is no separate download"
)


def _answer_type(answer: str) -> str:
    """VQA's answer_type of an answer: yes/no, number or other."""
    if answer in ("yes", "no"):
        return "yes/no"
    return "number" if answer.isdigit() else "other"


def _ten_answers(answer: str, other: photos.Photo) -> list[str]:
    """10 crowd answers: mostly `answer`, two dissenting (the opposite, a neighbour, another noun)."""
    if answer in ("yes", "no"):
        dissent = "no" if answer == "yes" else "yes"
    else:
        dissent = str(int(answer) + 1) if answer.isdigit() else other.noun
    return [answer] * 8 + [dissent] * 2


def _question_type(question: str) -> str:
    lowered = question.lower()
    return next((t for t in _VQA_TYPES if lowered.startswith(t + " ")), "none of the above")


def _vqa_pair(
    m: Miniature, dataset: str, subset: str, num_images: int, okvqa: bool
) -> tuple[list, list]:
    questions, annotations = [], []
    for _ in range(num_images):
        _, image_id, photo = coco_image(m, dataset, subset)
        for k, (question, answer) in enumerate(photo.qa):
            # VQA ids are image_id * 1000 + n; OK-VQA's are image_id * 10 + n.
            question_id = image_id * (10 if okvqa else 1000) + k
            questions.append(
                {"image_id": image_id, "question": question, "question_id": question_id}
            )
            answers = _ten_answers(answer.lower(), m.next_photo())
            entry = {
                "image_id": image_id,
                "question_id": question_id,
                "answer_type": _answer_type(answers[0]),
            }
            if okvqa:
                entry["question_type"] = "other"
                entry["confidence"] = 3
                entry["answers"] = [
                    {"answer_id": i + 1, "raw_answer": a, "answer_confidence": "yes", "answer": a}
                    for i, a in enumerate(answers)
                ]
            else:
                entry["question_type"] = _question_type(question)
                entry["multiple_choice_answer"] = answers[0]
                entry["answers"] = [
                    {
                        "answer": a,
                        "answer_confidence": "yes" if i < 8 else "maybe",
                        "answer_id": i + 1,
                    }
                    for i, a in enumerate(answers)
                ]
            annotations.append(entry)
    return questions, annotations


def _vqa_family(m: Miniature, dataset: str, directory: str, prefix: str, okvqa: bool) -> dict:
    splits = {}
    for name in ("train", "val"):
        subtype = f"{name}2014"
        questions, annotations = _vqa_pair(m, dataset, subtype, 2, okvqa)
        corrupt = m.corrupts(dataset) and name == "train"
        if corrupt:
            m.break_media(
                dataset,
                name,
                f"{COCO_IMAGES}/{subtype}/COCO_{subtype}_{questions[0]['image_id']:012d}.jpg",
            )
        header = {"info": {"description": f"{dataset} miniature"}, "license": {"name": "CC BY 4.0"}}
        header.update({"data_type": "mscoco", "data_subtype": subtype})
        question_file = f"{directory}/{prefix}OpenEnded_mscoco_{subtype}_questions.json"
        annotation_file = f"{directory}/{prefix}mscoco_{subtype}_annotations.json"
        if corrupt:
            annotations.append({"image_id": 1, "question_id": 1000, "answers": "not a list"})
            m.malformed(
                dataset,
                name,
                annotation_file,
                f"entry #{len(annotations) - 1}",
                "field 'answers' should be list",
            )
        m.write_json(question_file, {**header, "task_type": "Open-Ended", "questions": questions})
        m.write_json(annotation_file, {**header, "annotations": annotations})
        splits[name] = split([question_file, annotation_file], len(questions), "question", images=2)
    return splits


def vqav2(m: Miniature) -> None:
    """VQA v2 (visualqa.org): one questions file and one annotations file per COCO 2014 subset.

    vqav2/v2_OpenEnded_mscoco_{train2014,val2014}_questions.json  {"info", "task_type",
        "data_type": "mscoco", "data_subtype", "license", "questions": [{"image_id", "question",
        "question_id"}]}.
    vqav2/v2_mscoco_{train2014,val2014}_annotations.json  {"info", "license", "data_type",
        "data_subtype", "annotations": [{"question_id", "image_id", "question_type",
        "answer_type", "multiple_choice_answer", "answers": [{"answer", "answer_confidence"
        (yes/maybe/no), "answer_id"} x 10]}]}.
    Images: coco/images/<subset>/COCO_<subset>_<12-digit id>.jpg (shared COCO tree).
    Verified: GT-Vision-Lab/VQA PythonHelperTools/vqaTools/vqa.py (top-level keys), big_vision
    datasets/vqa/vqa.py (file names, answer keys, multiple_choice_answer, image names).
    """
    splits = _vqa_family(m, "vqav2", "vqav2", "v2_", okvqa=False)
    m.record(
        "vqav2", "in", "GT-Vision-Lab/VQA vqaTools/vqa.py; big_vision datasets/vqa/vqa.py", splits
    )
    m.record("vqav2_qg", "in", _QG_NOTE.format("VQAv2"), splits, derived_from="vqav2")


def okvqa(m: Miniature) -> None:
    """OK-VQA (okvqa.allenai.org), the VQA format without the v2_ prefix.

    okvqa/OpenEnded_mscoco_{train2014,val2014}_questions.json and
    okvqa/mscoco_{train2014,val2014}_annotations.json; answers carry "raw_answer" and
    "answer_confidence" yes/no, "question_type" is a knowledge category ("one".."ten", "other").
    Images: coco/images/<subset>/COCO_<subset>_<12-digit id>.jpg.
    Verified: big_vision datasets/okvqa/okvqa.py (file names, answer keys, question types, image
    names). Not verified: the annotation-level "confidence" field and the image_id*10+n ids.
    """
    splits = _vqa_family(m, "okvqa", "okvqa", "", okvqa=True)
    m.record("okvqa", "in", "big_vision datasets/okvqa/okvqa.py", splits)
    m.record("okvqa_qg", "in", _QG_NOTE.format("OK-VQA"), splits, derived_from="okvqa")


def aokvqa(m: Miniature) -> None:
    """A-OKVQA v1.0 (allenai/aokvqa: aokvqa_v1p0.tar.gz).

    aokvqa/aokvqa_v1p0_{train,val}.json  [{"split", "image_id", "question_id", "question",
        "choices" (4), "correct_choice_idx", "direct_answers" (10), "difficult_direct_answer",
        "rationales" (3)}].
    Images: COCO 2017, coco/images/{train2017,val2017}/<12-digit id>.jpg (load_aokvqa.py's
        get_coco_path).
    Verified: allenai/aokvqa README (example entry) and load_aokvqa.py.
    """
    splits = {}
    for name in ("train", "val"):
        entries = []
        for _ in range(3):
            image_id = m.unique_id("coco", 9, 581930)
            photo = m.photo("aokvqa", f"{COCO_IMAGES}/{name}2017/{image_id:012d}.jpg", "RGB")
            distractors = [p.noun for p in photos.PHOTOS if p.noun != photo.noun]
            start = int(m.rng.integers(0, len(distractors) - 3))
            choices, correct = distractors[start : start + 3], int(m.rng.integers(0, 4))
            choices.insert(correct, photo.noun)
            entries.append(
                {
                    "split": name,
                    "image_id": image_id,
                    "question_id": m.hex_id(22),
                    "question": f"What is the main thing in this picture, a {' or a '.join(choices)}?",
                    "choices": choices,
                    "correct_choice_idx": correct,
                    "direct_answers": [photo.noun] * 9 + [choices[(correct + 1) % 4]],
                    "difficult_direct_answer": False,
                    "rationales": [photo.captions[0], photo.captions[1], photo.captions[2]],
                }
            )
        path = m.write_json(f"aokvqa/aokvqa_v1p0_{name}.json", entries)
        splits[name] = split(path, 3, "question", images=3)
    m.record("aokvqa", "in", "allenai/aokvqa README and load_aokvqa.py", splits)
    m.record("aokvqa_qg", "in", _QG_NOTE.format("A-OKVQA"), splits, derived_from="aokvqa")


_GENRES = ("Arts & Photography", "Science & Math", "Travel", "Reference")


def ocrvqa(m: Miniature) -> None:
    """OCR-VQA (ocr-vqa.github.io): one dataset.json keyed by the book's id; images are fetched from
    "imageURL" by the authors' downloader and named <id><extension of the URL>.

    ocrvqa/dataset.json  {"<id>": {"imageURL", "questions", "answers", "title", "authorName",
        "genre", "split": 1 (train) | 2 (val) | 3 (test)}}.
    ocrvqa/images/<id>.jpg
    OCR-VQA ships no OCR tokens. Verified: open-mmlab/mmpretrain datasets/ocr_vqa.py (example
    entry, split codes, image name rule). Not verified: the downloader's output folder name.
    """
    data, counts = {}, {1: 0, 3: 0}
    for index, split_code in enumerate((1, 1, 3)):
        book_id = str(m.unique_id("ocrvqa", 100000000, 999999999))
        photo = m.photo("ocrvqa", f"ocrvqa/images/{book_id}.jpg", "L" if index == 1 else "RGB")
        title, author = (
            f"The {photo.noun.title()} Book",
            ("Sandra Boynton", "Ann Lee", "Tom Park")[index],
        )
        genre = _GENRES[index % len(_GENRES)]
        data[book_id] = {
            "imageURL": f"http://ecx.images-amazon.com/images/I/{m.hex_id(11)}.jpg",
            "questions": [
                "Who wrote this book?",
                "What is the title of this book?",
                f"Is this a {genre} book?",
            ],
            "answers": [author, title, "Yes"],
            "title": title,
            "authorName": author,
            "genre": genre,
            "split": split_code,
        }
        counts[split_code] += 3
    path = m.write_json("ocrvqa/dataset.json", data)
    splits = {
        "train": split(path, counts[1], "question", images=2),
        "test": split(path, counts[3], "question", images=1),
    }
    m.record("ocrvqa", "in", "open-mmlab/mmpretrain mmpretrain/datasets/ocr_vqa.py", splits)


def gqa(m: Miniature) -> None:
    """GQA balanced questions (questions1.2.zip) and images (images.zip -> images/).

    gqa/{train,testdev}_balanced_questions.json  {"<question id>": {"question", "imageId",
        "answer", "fullAnswer", "isBalanced", "types", "semantic", "semanticStr", "annotations",
        "entailed", "equivalent", "groups"}}; testdev image ids look like "n161313".
    gqa/images/<imageId>.jpg
    Verified: big_vision datasets/gqa/gqa.py (file names, images/<imageId>.jpg, the keys it
    reads: imageId, question, answer, fullAnswer, isBalanced). The other keys are from memory of
    the file and carry placeholder values.
    """
    splits = {}
    for name, prefix in (("train", ""), ("testdev", "n")):
        questions = {}
        for _ in range(2):
            image_id = f"{prefix}{m.unique_id('gqa', 1000, 2417997)}"
            photo = m.photo("gqa", f"gqa/images/{image_id}.jpg", "RGB")
            for question, answer in photo.qa:
                questions[f"{m.unique_id('gqa_q', 10000000, 99999999)}"] = {
                    "semantic": [],
                    "entailed": [],
                    "equivalent": [],
                    "question": question,
                    "imageId": image_id,
                    "isBalanced": True,
                    "groups": {"global": None, "local": None},
                    "answer": answer.lower(),
                    "semanticStr": "",
                    "annotations": {"answer": {}, "question": {}, "fullAnswer": {}},
                    "types": {"detailed": "", "semantic": "obj", "structural": "query"},
                    "fullAnswer": f"The answer is {answer.lower()}.",
                }
        path = m.write_json(f"gqa/{name}_balanced_questions.json", questions)
        splits[name] = split(path, len(questions), "question", images=2)
    m.record("gqa", "out", "big_vision datasets/gqa/gqa.py", splits)


def vizwiz(m: Miniature) -> None:
    """VizWiz-VQA (vizwiz.org): Annotations.zip and one image zip per split.

    vizwiz/Annotations/{train,val}.json  [{"image": "VizWiz_<split>_<8 digits>.jpg", "question",
        "answers": [{"answer", "answer_confidence"} x 10], "answer_type", "answerable"}].
    vizwiz/{train,val}/VizWiz_<split>_<8 digits>.jpg
    Verified: big_vision datasets/vizwizvqa/vizwizvqa.py (keys it reads, <split>/<image>); the
    capital "Annotations" folder from LAVIS configs/datasets/vizwiz/defaults.yaml's comment
    (big_vision writes "annotations"). Not verified: answer_type values.
    """
    splits = {}
    for name in ("train", "val"):
        entries = []
        for index in range(3):
            image = f"VizWiz_{name}_{index:08d}.jpg"
            photo = m.photo("vizwiz", f"vizwiz/{name}/{image}", "RGB")
            question, answer = photo.qa[0]
            answerable = index != 2  # VizWiz keeps the questions a sighted helper could not answer
            answers = (
                _ten_answers(answer.lower(), m.next_photo())
                if answerable
                else ["unanswerable"] * 10
            )
            entries.append(
                {
                    "image": image,
                    "question": question.lower(),
                    "answers": [{"answer": a, "answer_confidence": "yes"} for a in answers],
                    "answer_type": _answer_type(answers[0]) if answerable else "unanswerable",
                    "answerable": int(answerable),
                }
            )
        path = m.write_json(f"vizwiz/Annotations/{name}.json", entries)
        splits[name] = split(path, 3, "question", images=3)
    m.record(
        "vizwiz",
        "out",
        "big_vision datasets/vizwizvqa/vizwizvqa.py; LAVIS vizwiz defaults.yaml",
        splits,
    )


def textvqa(m: Miniature) -> None:
    """TextVQA 0.5.1 (dl.fbaipublicfiles.com/textvqa/data/).

    textvqa/TextVQA_0.5.1_{train,val}.json  {"dataset_type", "dataset_name": "textvqa",
        "dataset_version": "0.5.1", "data": [{"question", "image_id", "image_classes",
        "flickr_original_url", "flickr_300k_url", "image_width", "image_height", "answers" (10),
        "question_tokens", "question_id", "set_name"}]} (no OCR tokens in these files).
    textvqa/TextVQA_Rosetta_OCR_v0.2_{train,val}.json  the OCR tokens per image_id.
    textvqa/train_images/<image_id>.jpg  train_val_images.zip holds train AND val images.
    Verified: big_vision datasets/textvqa/textvqa.py (file names, train_images/ for val too),
    the HF "textvqa" features list (entry keys). Not verified: the top-level header values.
    """
    splits = {}
    for name in ("train", "val"):
        entries, ocr = [], []
        for _ in range(2):
            image_id = m.hex_id()
            photo = m.photo(
                "textvqa", f"textvqa/train_images/{image_id}.jpg", "RGB", photo=m.next_photo(True)
            )
            ocr.append(rosetta_ocr(image_id, photo.ocr))
            for question, answer in (
                ("What does the text say?", " ".join(photo.ocr).lower()),
                photo.qa[0],
            ):
                entries.append(
                    {
                        "question": question.lower(),
                        "image_id": image_id,
                        "image_classes": [photo.noun.capitalize()],
                        "flickr_original_url": f"https://farm2.staticflickr.com/2/{image_id}_o.jpg",
                        "flickr_300k_url": f"https://c2.staticflickr.com/2/{image_id}_z.jpg",
                        "image_width": 1024,
                        "image_height": 683,
                        "answers": [answer.lower()] * 10,
                        "question_tokens": question.lower().rstrip("?").split(),
                        "question_id": m.unique_id("textvqa", 0, 50000),
                        "set_name": name,
                    }
                )
        header = {"dataset_type": name, "dataset_name": "textvqa", "dataset_version": "0.5.1"}
        path = m.write_json(f"textvqa/TextVQA_0.5.1_{name}.json", {**header, "data": entries})
        ocr_path = m.write_json(f"textvqa/TextVQA_Rosetta_OCR_v0.2_{name}.json", {"data": ocr})
        splits[name] = split([path, ocr_path], len(entries), "question", images=2)
    m.record(
        "textvqa", "out", "big_vision datasets/textvqa/textvqa.py; HF textvqa features", splits
    )
