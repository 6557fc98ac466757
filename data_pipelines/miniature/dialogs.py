"""Dialog datasets in their published layouts: Visual Dialog v1.0 and LLaVA-Instruct-150K."""

from __future__ import annotations

from data_pipelines.miniature import photos
from data_pipelines.miniature.captions import COCO_IMAGES, coco_image
from data_pipelines.miniature.writer import Miniature, split

NUM_OPTIONS = 100  # Visual Dialog ranks 100 candidate answers per round
_COLORS = ("white", "black", "red", "blue", "green", "gray", "brown", "orange", "yellow", "pink")
_GENERIC_QA = (
    ("is the photo in color?", "yes"),
    ("are there any people?", "no"),
    ("is it daytime?", "i can't tell"),
    ("what color is the background?", "gray"),
)


def _answer_pool() -> list[str]:
    """At least 100 distinct short answers, the kind Visual Dialog's option lists hold."""
    nouns = [p.noun for p in photos.PHOTOS]
    pool = ["yes", "no", "i can't tell", "not sure", "yes it is", "no it isn't", "i think so"]
    pool += [str(n) for n in range(21)] + list(_COLORS) + nouns
    pool += [f"{c} {n}" for c in _COLORS[:4] for n in nouns]
    return list(dict.fromkeys(pool))


def _dialog(
    m: Miniature, image_id: int, photo: photos.Photo, questions: list, answers: list
) -> dict:
    """One dialog of 3 rounds; questions/answers are the file's shared string tables (appended)."""
    rounds = []
    for question, answer in list(photo.qa[:1]) + list(_GENERIC_QA[:2]):
        answer = answer.lower()
        if question.lower() not in questions:
            questions.append(question.lower())
        if answer not in answers:
            answers.append(answer)
        gt_answer = answers.index(answer)
        others = [i for i in range(len(answers)) if i != gt_answer]
        options = [int(i) for i in m.rng.choice(others, size=NUM_OPTIONS - 1, replace=False)]
        gt_index = int(m.rng.integers(0, NUM_OPTIONS))
        options.insert(gt_index, gt_answer)
        rounds.append(
            {
                "question": questions.index(question.lower()),
                "answer": gt_answer,
                "answer_options": options,
                "gt_index": gt_index,
            }
        )
    return {
        "image_id": image_id,
        "caption": photo.captions[0].lower().rstrip("."),
        "dialog": rounds,
    }


def visdial(m: Miniature) -> None:
    """Visual Dialog v1.0 (visualdialog.org; batra-mlp-lab/visdial data/prepro.py).

    visdial/visdial_1.0_{train,val}.json  {"version": "1.0", "split": "train2018"|"val2018",
        "data": {"dialogs": [{"image_id", "caption", "dialog": [{"question": index, "answer":
        index, "answer_options": [100 indices], "gt_index"}]}], "questions": [str],
        "answers": [str]}}.
    val images: visdial/VisualDialog_val2018/VisualDialog_val2018_<12-digit id>.jpg;
    train images: COCO train2014/val2014, coco/images/train2014/COCO_train2014_<12-digit id>.jpg.
    Real dialogs have 10 rounds; the miniature's have 3. Verified: batra-mlp-lab/visdial README
    (image folders) and data/prepro.py (keys); the "val2018" split value from a public script
    writing the format. Not verified: the v1.0 train file's split value ("train2018").
    """
    answers = _answer_pool()
    splits = {}
    for name, count in (("train", 1), ("val", 2)):
        questions, dialogs = [], []
        file_answers = list(answers)
        for _ in range(count):
            if name == "train":
                _, image_id, photo = coco_image(m, "visdial", "train2014")
            else:
                image_id = m.unique_id("visdial", 1, 600000)
                folder = "visdial/VisualDialog_val2018"
                photo = m.photo(
                    "visdial", f"{folder}/VisualDialog_val2018_{image_id:012d}.jpg", "RGB"
                )
            dialogs.append(_dialog(m, image_id, photo, questions, file_answers))
        body = {"dialogs": dialogs, "questions": questions, "answers": file_answers}
        path = m.write_json(
            f"visdial/visdial_1.0_{name}.json",
            {"version": "1.0", "split": f"{name}2018", "data": body},
        )
        rounds = sum(len(d["dialog"]) for d in dialogs)
        splits[name] = split(path, rounds, "round", dialogs=count, options_per_round=NUM_OPTIONS)
    m.record("visdial", "out", "batra-mlp-lab/visdial README and data/prepro.py", splits)


LLAVA_DIR = (
    "LLaVA-Instruct-150K"  # the Hugging Face dataset repository liuhaotian/LLaVA-Instruct-150K
)
_FOLLOW_UPS = (
    (
        "Where might this picture have been taken?",
        "It looks like it was taken indoors, in good light.",
    ),
    ("What else can you notice?", "The background is plain, so the {noun} stands out clearly."),
)


def _first_turn(text: str, image_first: bool) -> str:
    # llava_instruct_150k puts the image token before or after the first question.
    return f"<image>\n{text}" if image_first else f"{text}\n<image>"


def _llava_part(m: Miniature, part: str) -> list[dict]:
    entries = []
    for index in range(2):
        image_id = m.unique_id("coco", 9, 581930)
        photo = m.photo(part, f"{COCO_IMAGES}/train2017/{image_id:012d}.jpg", "RGB")
        first = index == 0
        if part == "llava_conversation":
            question, answer = photo.qa[0]
            turns = [(question, f"The answer is {answer.lower()}: {photo.captions[0].lower()}")]
            turns += [(q, a.format(noun=photo.noun)) for q, a in _FOLLOW_UPS[: 1 + index]]
        elif part == "llava_detail":
            turns = [("Describe the following image in detail.", " ".join(photo.captions[:3]))]
        else:
            turns = [
                (
                    f"Why might someone take a photo of the {photo.noun}?",
                    f"{photo.captions[1]} It is worth showing.",
                )
            ]
        conversations = []
        for k, (question, answer) in enumerate(turns):
            conversations.append(
                {"from": "human", "value": _first_turn(question, first) if k == 0 else question}
            )
            conversations.append({"from": "gpt", "value": answer})
        entries.append(
            {
                "id": f"{image_id:012d}",
                "image": f"{image_id:012d}.jpg",
                "conversations": conversations,
            }
        )
    return entries


def llava(m: Miniature) -> None:
    """LLaVA-Instruct-150K (huggingface.co/datasets/liuhaotian/LLaVA-Instruct-150K).

    LLaVA-Instruct-150K/{conversation_58k,detail_23k,complex_reasoning_77k}.json and
    LLaVA-Instruct-150K/llava_instruct_150k.json (the three together): [{"id": "<12 digits>",
        "image": "<12 digits>.jpg", "conversations": [{"from": "human"|"gpt", "value": str}]}],
        "<image>" before or after the first human turn; conversations are multi-turn, detail and
        reasoning single-turn.
    Images: COCO train2017, coco/images/train2017/<12 digits>.jpg (LLaVA's --image_folder
        /path/to/coco/train2017; LAVIS's llava150k config points at coco/images/train2017).
    Verified: LLaVA docs/Data.md (file names), scripts/finetune.sh (image folder), docs/
    Finetune_Custom_Data.md and public copies of the first entry (keys, "<image>\\n").
    """
    union, files = [], {}
    for part, file in (
        ("llava_conversation", "conversation_58k.json"),
        ("llava_detail", "detail_23k.json"),
        ("llava_complex_reasoning", "complex_reasoning_77k.json"),
    ):
        entries = _llava_part(m, part)
        union += entries
        files[part] = (m.write_json(f"{LLAVA_DIR}/{file}", entries), entries)
    union_path = m.write_json(f"{LLAVA_DIR}/llava_instruct_150k.json", union)
    for part, (path, entries) in files.items():
        turns = sum(len(e["conversations"]) // 2 for e in entries)
        splits = {
            "train": split(path, len(entries), "conversation", turns=turns, union_file=union_path)
        }
        m.record(part, "in", "haotian-liu/LLaVA docs/Data.md, scripts/finetune.sh", splits)
