"""Annotation parsers on small fixtures written in the datasets' public formats."""

import json
import os

import pytest

from data_pipelines import formats


def _write(tmp_path, name, content):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        path.write_text(content)
    else:
        path.write_text(json.dumps(content))
    return str(path)


def _jsonl(rows):
    return "\n".join(json.dumps(r) for r in rows) + "\n"


@pytest.fixture
def root(tmp_path):
    return str(tmp_path / "images")


def _img(root, rel):
    return os.path.join(root, rel)


# --- captions ------------------------------------------------------------------------------------


def test_lavis_captions_grouped_per_image(tmp_path, root):
    path = _write(
        tmp_path,
        "coco_karpathy_train.json",
        [
            {
                "image": "val2014/COCO_val2014_000000000042.jpg",
                "caption": "A dog.",
                "image_id": "42",
            },
            {
                "image": "val2014/COCO_val2014_000000000042.jpg",
                "caption": "A brown dog.",
                "image_id": "42",
            },
            {
                "image": "val2014/COCO_val2014_000000000073.jpg",
                "caption": ["A cat.", "Cat on mat."],
                "image_id": "73",
            },
        ],
    )
    records = formats.parse("coco_caption", path, root, dataset="coco_caption")
    assert records == [
        {
            "id": "42",
            "image": _img(root, "val2014/COCO_val2014_000000000042.jpg"),
            "captions": ["A dog.", "A brown dog."],
            "dataset": "coco_caption",
        },
        {
            "id": "73",
            "image": _img(root, "val2014/COCO_val2014_000000000073.jpg"),
            "captions": ["A cat.", "Cat on mat."],
            "dataset": "coco_caption",
        },
    ]
    assert records.report.num_records == 2 and records.report.num_errors == 0


def test_official_coco_and_nocaps_layout(tmp_path, root):
    path = _write(
        tmp_path,
        "nocaps_val_4500_captions.json",
        {
            "licenses": [],
            "info": {},
            "images": [
                {"id": 0, "file_name": "0013ea2087020901.jpg", "domain": "in-domain"},
                {"id": 1, "file_name": "0023a7b5d6c4e79a.jpg", "domain": "out-domain"},
            ],
            "annotations": [
                {"image_id": 0, "id": 0, "caption": "a man riding a bike"},
                {"image_id": 1, "id": 1, "caption": "a jellyfish"},
                {"image_id": 0, "id": 2, "caption": "a cyclist"},
                {"image_id": 9, "id": 3, "caption": "orphan"},
            ],
        },
    )
    records = formats.parse("nocaps", path, root, max_errors=1)
    assert [r["captions"] for r in records] == [
        ["a man riding a bike", "a cyclist"],
        ["a jellyfish"],
    ]
    assert records[1]["image"] == _img(root, "0023a7b5d6c4e79a.jpg")
    assert records.report.num_errors == 1
    assert "annotations #3: image_id 9 is not in 'images'" in records.report.messages[0]


def test_karpathy_flickr_split_filter(tmp_path, root):
    path = _write(
        tmp_path,
        "dataset_flickr30k.json",
        {
            "dataset": "flickr30k",
            "images": [
                {
                    "filename": "1000092795.jpg",
                    "imgid": 0,
                    "split": "train",
                    "sentences": [{"raw": "Two young guys.", "tokens": ["two", "young", "guys"]}],
                },
                {
                    "filename": "10002456.jpg",
                    "imgid": 1,
                    "split": "test",
                    "sentences": [
                        {"raw": "Workers on a roof. ", "tokens": []},
                        {"raw": "A building.", "tokens": []},
                    ],
                },
            ],
        },
    )
    records = formats.parse("flickr30k", path, root, split="test")
    assert records == [
        {
            "id": "1",
            "image": _img(root, "10002456.jpg"),
            "captions": ["Workers on a roof.", "A building."],
            "dataset": "flickr30k",
        }
    ]
    assert records.report.num_skipped == 1


def test_textcaps(tmp_path, root):
    path = _write(
        tmp_path,
        "TextCaps_0.1_train.json",
        {
            "dataset_type": "train",
            "data": [
                {
                    "image_id": "011e7e629fb9ae7b",
                    "image_path": "train/011e7e629fb9ae7b.jpg",
                    "caption_id": 1,
                    "caption_str": "A sign reading STOP.",
                    "image_classes": [],
                },
                {
                    "image_id": "011e7e629fb9ae7b",
                    "image_path": "train/011e7e629fb9ae7b.jpg",
                    "caption_id": 2,
                    "caption_str": "A red stop sign.",
                },
            ],
        },
    )
    (record,) = formats.parse("textcaps", path, root)
    assert record["captions"] == ["A sign reading STOP.", "A red stop sign."]
    # image_path's "train/" folder is not in the zip: the file is <image_root>/<image_name>.jpg
    # (image_id when image_name is absent).
    assert record["image"] == _img(root, "011e7e629fb9ae7b.jpg")


# --- question answering --------------------------------------------------------------------------


def _vqa_files(tmp_path, with_missing_annotation=False):
    questions = _write(
        tmp_path,
        "v2_OpenEnded_mscoco_val2014_questions.json",
        {
            "data_subtype": "val2014",
            "task_type": "Open-Ended",
            "questions": [
                {"image_id": 42, "question": "How many dogs?", "question_id": 42000},
                {"image_id": 73, "question": "What color?", "question_id": 73000},
            ],
        },
    )
    anns = [
        {
            "question_id": 42000,
            "image_id": 42,
            "multiple_choice_answer": "2",
            "answers": [
                {"answer": "2", "answer_confidence": "yes", "answer_id": i + 1} for i in range(10)
            ],
        }
    ]
    if not with_missing_annotation:
        anns.append(
            {
                "question_id": 73000,
                "image_id": 73,
                "multiple_choice_answer": "red",
                "answers": [{"answer": "red", "answer_id": i + 1} for i in range(10)],
            }
        )
    annotations = _write(
        tmp_path,
        "v2_mscoco_val2014_annotations.json",
        {"data_subtype": "val2014", "annotations": anns},
    )
    return questions, annotations


def test_vqav2_official_pair(tmp_path, root):
    questions, annotations = _vqa_files(tmp_path)
    records = formats.parse("vqav2", [questions, annotations], root)
    assert records[0] == {
        "id": "42000",
        "question": "How many dogs?",
        "answers": ["2"] * 10,
        "image": _img(root, "val2014/COCO_val2014_000000000042.jpg"),
        "dataset": "vqav2",
    }
    # The questions file alone (test split): no answers.
    assert "answers" not in formats.parse("okvqa", questions, root)[1]


def test_vqav2_question_without_annotation_is_reported(tmp_path, root):
    questions, annotations = _vqa_files(tmp_path, with_missing_annotation=True)
    with pytest.raises(formats.ParseError, match=r"entry #1: question_id 73000 has no entry"):
        formats.parse("vqav2", [questions, annotations], root)
    records = formats.parse("vqav2", [questions, annotations], root, max_errors=5)
    assert len(records) == 1 and records.report.num_errors == 1


def test_vqav2_lavis_list_as_written_by_demo(tmp_path, root):
    path = _write(
        tmp_path,
        "vqa_train.json",
        [
            {
                "question_id": 7,
                "question": "What shape?",
                "answer": ["circle"] * 10,
                "image": "train/train_000000.png",
                "dataset": "vqa",
            }
        ],
    )
    (record,) = formats.parse("vqav2", path, root, dataset="demo_vqa")
    assert record["answers"] == ["circle"] * 10 and record["dataset"] == "demo_vqa"
    assert record["image"] == _img(root, "train/train_000000.png")


def test_aokvqa(tmp_path, root):
    path = _write(
        tmp_path,
        "aokvqa_v1p0_val.json",
        [
            {
                "split": "val",
                "image_id": 461751,
                "question_id": "22jbM6gDxdaMaunuzgrsBB",
                "question": "What is in the motorcyclist's mouth?",
                "choices": ["toothpick", "food", "popsicle stick", "cigarette"],
                "correct_choice_idx": 3,
                "direct_answers": ["cigarette"] * 10,
                "difficult_direct_answer": False,
                "rationales": ["..."],
            },
            {
                "split": "val",
                "image_id": 1,
                "question_id": "bad",
                "question": "?",
                "choices": ["a", "b"],
                "correct_choice_idx": 5,
                "direct_answers": [],
            },
        ],
    )
    records = formats.parse("aokvqa", path, root, max_errors=1)
    assert records[0]["image"] == _img(root, "val2017/000000461751.jpg")
    assert records[0]["choices"][records[0]["answer_index"]] == "cigarette"
    assert records[0]["answers"] == ["cigarette"] * 10
    assert "entry #1: correct_choice_idx 5 outside the 2 choices" in records.report.messages[0]


def test_gqa(tmp_path, root):
    path = _write(
        tmp_path,
        "testdev_balanced_questions.json",
        {
            "20968379": {
                "imageId": "n288870",
                "question": "Is the sky dark?",
                "answer": "yes",
                "fullAnswer": "Yes, the sky is dark.",
                "types": {},
            },
            "bad": {"question": "no image"},
        },
    )
    records = formats.parse("gqa", path, root, max_errors=1)
    assert records[0] == {
        "id": "20968379",
        "image": _img(root, "n288870.jpg"),
        "question": "Is the sky dark?",
        "answers": ["yes"],
        "dataset": "gqa",
    }
    assert "key 'bad': missing field 'imageId'" in records.report.messages[0]


def test_vizwiz(tmp_path, root):
    path = _write(
        tmp_path,
        "val.json",
        [
            {
                "image": "VizWiz_val_00000000.jpg",
                "question": "Ok. There is another picture?",
                "answers": [{"answer": "unanswerable", "answer_confidence": "yes"}] * 10,
                "answer_type": "unanswerable",
                "answerable": 0,
            }
        ],
    )
    (record,) = formats.parse("vizwiz", path, root)
    assert record["id"] == "VizWiz_val_00000000" and record["answers"] == ["unanswerable"] * 10


def test_textvqa_ocr_from_entry_and_rosetta_file(tmp_path, root):
    path = _write(
        tmp_path,
        "TextVQA_0.5.1_val.json",
        {
            "dataset_type": "val",
            "data": [
                {
                    "question": "what is the brand?",
                    "image_id": "003a8ae2ef43b901",
                    "question_id": 34602,
                    "answers": ["nokia"] * 10,
                    "set_name": "val",
                    "ocr_tokens": ["NOKIA", "phone"],
                },
                {
                    "question": "what year?",
                    "image_id": "00685bc495504d61",
                    "question_id": 34603,
                    "answers": ["1999"] * 10,
                    "set_name": "val",
                },
            ],
        },
    )
    ocr = _write(
        tmp_path,
        "TextVQA_Rosetta_OCR_v0.2_val.json",
        {"data": [{"image_id": "00685bc495504d61", "ocr_tokens": ["1999", "wine"]}]},
    )
    records = formats.parse("textvqa", path, root, ocr_path=ocr)
    assert records[0]["ocr_tokens"] == ["NOKIA", "phone"]
    assert records[1]["ocr_tokens"] == ["1999", "wine"]
    assert records[1]["image"] == _img(root, "00685bc495504d61.jpg")  # root: train_images/


def test_ocrvqa_split_and_mismatch(tmp_path, root):
    path = _write(
        tmp_path,
        "dataset.json",
        {
            "1001": {
                "imageURL": "http://x/1001.jpg",
                "questions": ["Who wrote this book?", "What is the genre?"],
                "answers": ["Jane Doe", "Travel"],
                "title": "T",
                "genre": "Travel",
                "split": 1,
            },
            "1002": {
                "imageURL": "http://x/1002.gif",
                "questions": ["Q"],
                "answers": ["A"],
                "split": 3,
            },
            "1003": {
                "imageURL": "http://x/1003.jpg",
                "questions": ["Q1", "Q2"],
                "answers": ["A"],
                "split": 1,
            },
        },
    )
    records = formats.parse("ocrvqa", path, root, split="train", max_errors=1)
    assert [r["id"] for r in records] == ["1001_0", "1001_1"]
    assert records[1]["answers"] == ["Travel"]
    assert records.report.num_skipped == 1
    assert "key '1003': 2 questions but 1 answers" in records.report.messages[0]
    assert formats.parse("ocrvqa", path, root, split=3, max_errors=None)[0]["image"] == _img(
        root, "1002.gif"
    )


def test_iconqa(tmp_path, root):
    path = _write(
        tmp_path,
        "problems.json",
        {
            "12": {
                "question": "Which is heavier?",
                "choices": ["ball", "car"],
                "answer": 1,
                "ques_type": "choose_txt",
                "split": "test",
                "grade": "grade1",
            },
            "13": {
                "question": "How many dots?",
                "answer": "7",
                "ques_type": "fill_in_blank",
                "split": "test",
            },
        },
    )
    records = formats.parse("iconqa", path, root)
    assert records[0]["answer_index"] == 1
    assert records[0]["image"] == _img(root, "test/choose_txt/12/image.png")
    assert records[1]["answers"] == ["7"]
    only_txt = formats.parse("iconqa", path, root, ques_types=["choose_txt"])
    assert [r["id"] for r in only_txt] == ["12"]


def test_scienceqa_image_subset(tmp_path, root):
    path = _write(
        tmp_path,
        "problems.json",
        {
            "5": {
                "question": "Which animal is a mammal?",
                "choices": ["frog", "dog"],
                "answer": 1,
                "hint": "Mammals have fur.",
                "image": "image.png",
                "task": "closed choice",
                "split": "test",
            },
            "6": {
                "question": "Text-only?",
                "choices": ["a", "b"],
                "answer": 0,
                "hint": "",
                "image": None,
                "split": "test",
            },
            "7": {
                "question": "Train one",
                "choices": ["a", "b"],
                "answer": 0,
                "hint": "",
                "image": "image.png",
                "split": "train",
            },
        },
    )
    records = formats.parse("scienceqa", path, root, split="test")
    assert records == [
        {
            "id": "5",
            "question": "Which animal is a mammal?",
            "choices": ["frog", "dog"],
            "answer_index": 1,
            "image": _img(root, "test/5/image.png"),
            "text": "Mammals have fur.",
            "dataset": "scienceqa",
        }
    ]
    assert records.report.num_skipped == 2


def test_vsr_jsonl(tmp_path, root):
    path = _write(
        tmp_path,
        "test.jsonl",
        _jsonl(
            [
                {
                    "image": "000000085637.jpg",
                    "caption": "The cat is on the bed.",
                    "label": 1,
                    "relation": "on",
                    "subj": "cat",
                    "obj": "bed",
                },
                {
                    "image": "000000000001.jpg",
                    "caption": "The dog is under the car.",
                    "label": False,
                },
            ]
        )
        + "{not json\n",
    )
    records = formats.parse("vsr", path, root, max_errors=1)
    assert [(r["label"], r["answers"]) for r in records] == [(1, ["true"]), (0, ["false"])]
    assert records[0]["text"] == "The cat is on the bed."
    assert "line 3: invalid JSON" in records.report.messages[0]


def test_hateful_memes(tmp_path, root):
    path = _write(
        tmp_path,
        "dev_seen.jsonl",
        _jsonl(
            [
                {
                    "id": 8291,
                    "img": "img/08291.png",
                    "label": 1,
                    "text": "white people is this a shooting range",
                },
                {"id": 16, "img": "img/00016.png", "text": "no label in the test split"},
            ]
        ),
    )
    records = formats.parse("hateful_memes", path, root)
    assert records[0] == {
        "id": "8291",
        "image": _img(root, "img/08291.png"),
        "label": 1,
        "answers": ["yes"],  # the answer to "Is it hateful?": a training target too
        "text": "white people is this a shooting range",
        "dataset": "hateful_memes",
    }
    assert "label" not in records[1] and "answers" not in records[1]


def test_visdial_rounds_history_and_options(tmp_path, root):
    options = list(range(100))
    path = _write(
        tmp_path,
        "visdial_1.0_val.json",
        {
            "version": "1.0",
            "split": "val2018",
            "data": {
                "questions": ["is it sunny", "any people"],
                "answers": [f"answer {i}" for i in range(100)],
                "dialogs": [
                    {
                        "image_id": 185565,
                        "caption": "a beach with umbrellas",
                        "dialog": [
                            {"question": 0, "answer": 3, "answer_options": options, "gt_index": 3},
                            {
                                "question": 1,
                                "answer": 7,
                                "answer_options": options[::-1],
                                "gt_index": 92,
                            },
                        ],
                    }
                ],
            },
        },
    )
    records = formats.parse("visdial", path, root)
    assert len(records) == 2
    second = records[1]
    assert second["image"] == _img(root, "VisualDialog_val2018_000000185565.jpg")
    assert second["dialog"] == [["is it sunny", "answer 3"]]
    assert second["question"] == "any people" and len(second["answer_options"]) == 100
    assert second["answer_options"][second["gt_index"]] == "answer 7" == second["answers"][0]
    assert records[0]["dialog"] == [] and records[0]["captions"] == ["a beach with umbrellas"]


# --- video QA ------------------------------------------------------------------------------------


def _frames(root, video_dir, n=3):
    os.makedirs(os.path.join(root, video_dir), exist_ok=True)
    for i in range(n):
        open(os.path.join(root, video_dir, f"{i:05d}.jpg"), "wb").close()


def test_msvd_and_msrvtt_frames(tmp_path, root):
    _frames(root, "vid1")
    _frames(root, "video7010", n=2)
    msvd = _write(
        tmp_path,
        "msvd_test_qa.json",
        [
            {"answer": "dog", "id": 0, "question": "what is running?", "video_id": 1},
            {"answer": "cat", "id": 1, "question": "what sleeps?", "video_id": 2},
        ],
    )
    records = formats.parse("msvd_qa", msvd, root)
    assert records[0]["frames"] == [_img(root, f"vid1/{i:05d}.jpg") for i in range(3)]
    assert records[0]["answers"] == ["dog"]
    # No frames and no youtube_mapping.txt: the clip renamed vid<N>.avi (missing files are
    # counted when media are loaded, not parse errors).
    assert records[1]["video"] == _img(root, "vid2.avi")
    msrvtt = _write(
        tmp_path,
        "msrvtt_test_qa.json",
        [{"answer": "man", "category_id": 3, "id": 5, "question": "who talks?", "video_id": 7010}],
    )
    (record,) = formats.parse("msrvtt_qa", msrvtt, root)
    assert len(record["frames"]) == 2 and record["id"] == "5"


def test_ivqa_csv(tmp_path, root):
    _frames(root, "abc123_10_20")
    path = _write(
        tmp_path,
        "test.csv",
        "video_id,start,end,question,answer1,answer2,answer3,answer4,answer5\n"
        "abc123,10,20,what is the man cutting,onion,onion,onions,garlic,onion\n",
    )
    (record,) = formats.parse("ivqa", path, root)
    assert record["answers"] == ["onion", "onion", "onions", "garlic", "onion"]
    assert len(record["frames"]) == 3 and record["question"] == "what is the man cutting"
    bad = _write(tmp_path, "bad.csv", "vid,question\nx,y\n")
    with pytest.raises(formats.ParseError, match=r"bad.csv: missing csv columns \['video_id'\]"):
        formats.parse("ivqa", bad, root)


def test_llava_instruct(tmp_path, root):
    path = _write(
        tmp_path,
        "llava_instruct_150k.json",
        [
            {
                "id": "000000033471",
                "image": "000000033471.jpg",
                "conversations": [
                    {"from": "human", "value": "<image>\nWhat are the colors of the bus?"},
                    {"from": "gpt", "value": "White and red."},
                    {"from": "human", "value": "Any people?"},
                    {"from": "gpt", "value": "Yes."},
                ],
            },
            {
                "id": "1",
                "image": "1.jpg",
                "conversations": [{"from": "gpt", "value": "x"}, {"from": "human", "value": "y"}],
            },
        ],
    )
    records = formats.parse("llava_instruct", path, root, max_errors=1)
    # One example per turn, the earlier turns as context.
    assert [(r["question"], r["answers"], r["dialog"]) for r in records] == [
        ("What are the colors of the bus?", ["White and red."], []),
        ("Any people?", ["Yes."], [["What are the colors of the bus?", "White and red."]]),
    ]
    assert "entry #1: turn 0: expected 'human' then 'gpt'" in records.report.messages[0]
    first = formats.parse("llava_instruct", path, root, max_errors=1, turns="first")
    assert [r["question"] for r in first] == ["What are the colors of the bus?"]


# --- errors --------------------------------------------------------------------------------------


def test_missing_file_names_path(tmp_path, root):
    missing = str(tmp_path / "nope.json")
    with pytest.raises(FileNotFoundError, match="annotation file not found: .*nope.json"):
        formats.parse("gqa", missing, root)
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        formats.parse("vsr", str(tmp_path / "nope.jsonl"), root)


def test_invalid_json_and_layout(tmp_path, root):
    broken = _write(tmp_path, "broken.json", '[{"image": "a.jpg",')
    with pytest.raises(formats.ParseError, match=r"broken.json: invalid JSON at line 1"):
        formats.parse("coco_caption", broken, root)
    wrong = _write(tmp_path, "wrong.json", {"something": 1})
    with pytest.raises(formats.ParseError, match=r"wrong.json: unexpected layout"):
        formats.parse("aokvqa", wrong, root)


def test_report_bounds_and_wrong_types(tmp_path, root):
    rows = [{"image": f"{i}.jpg", "caption": 5} for i in range(30)]
    path = _write(tmp_path, "captions.json", rows)
    with pytest.raises(formats.ParseError, match=r"30 malformed entries .*allowed: 3") as info:
        formats.parse("coco_caption", path, root, max_errors=3)
    assert "entry #0: field 'caption' should be str/list, got int" in str(info.value)
    records = formats.parse("coco_caption", path, root, max_errors=None)
    assert records.report.num_errors == 30
    assert len(records.report.messages) == formats.MAX_MESSAGES


def test_unknown_format_and_option(tmp_path, root):
    with pytest.raises(KeyError, match=r"unknown annotation format 'coco'.*coco_caption"):
        formats.parse("coco", "x.json", root)
    path = _write(tmp_path, "g.json", {})
    with pytest.raises(TypeError, match=r"format 'gqa' does not take option\(s\) \['split'\]"):
        formats.parse("gqa", path, root, split="train")


def test_only_several_file_formats_take_a_list(tmp_path, root):
    assert formats.PARSERS["vqav2"].several_files and not formats.PARSERS["gqa"].several_files
    path = _write(tmp_path, "g.json", {})
    assert formats.parse("gqa", [path], root) == []  # a one-element list is one file
    with pytest.raises(formats.ParseError, match=r"format 'gqa' takes one annotation file"):
        formats.parse("gqa", [path, path], root)


# --- the published layouts: every parser on the miniature's files ------------------------------


@pytest.fixture(scope="module")
def miniature(tmp_path_factory):
    from data_pipelines.miniature import write_miniature

    root = str(tmp_path_factory.mktemp("miniature"))
    return root, write_miniature(root, seed=0)


def _layout_cases():
    from data_pipelines import layouts

    return [(name, split) for name in layouts.LAYOUTS for split in layouts.splits_of(name)]


@pytest.mark.parametrize("name,split", _layout_cases())
def test_every_published_layout_parses_to_existing_media(miniature, name, split):
    from data_pipelines import layouts, registry
    from data_pipelines.miniature import counts

    root, manifest = miniature
    entry = layouts.entry(name, split, root)
    records = formats.parse(
        registry.get(name).format,
        entry["ann_path"],
        entry["image_root"],
        dataset=name,
        **entry["parse_options"],
    )
    assert records.report.num_errors == 0
    assert len(records) == counts.expected_records(manifest, name, split)
    media = [m for r in records for m in ([r["video"]] if "video" in r else [r["image"]])]
    assert media and all(os.path.isfile(m) for m in media), media
    written = {os.path.join(root, p) for p in manifest["datasets"][name]["media"]}
    assert set(media) <= written  # the files the miniature wrote for this dataset


def test_web_capfilt_finds_images_through_img2dataset_sidecars(miniature):
    root, _ = miniature
    rows = json.load(open(os.path.join(root, "capfilt/ccs_synthetic_filtered_large.json")))
    records = formats.parse(
        "web_capfilt",
        os.path.join(root, "capfilt/ccs_synthetic_filtered_large.json"),
        os.path.join(root, "capfilt/images"),
    )
    for row, record in zip(rows, records):
        sidecar = json.load(open(os.path.splitext(record["image"])[0] + ".json"))
        assert sidecar["url"] == row["url"] and record["captions"] == [row["caption"]]


def test_web_capfilt_skips_urls_never_downloaded(miniature, tmp_path):
    root, _ = miniature
    rows = json.load(open(os.path.join(root, "capfilt/ccs_synthetic_filtered_large.json")))
    path = _write(tmp_path, "capfilt.json", rows + [{"url": "http://gone/x.jpg", "caption": "c"}])
    records = formats.parse("web_capfilt", path, os.path.join(root, "capfilt/images"))
    assert len(records) == len(rows) and records.report.num_skipped == 1


def test_textcaps_and_textvqa_carry_the_rosetta_ocr_tokens(miniature):
    from data_pipelines import layouts

    root, _ = miniature
    for name in ("textcaps", "textvqa"):
        entry = layouts.entry(name, "eval", root)
        ocr = json.load(open(entry["parse_options"]["ocr_path"]))["data"]
        by_image = {o["image_id"]: o["ocr_tokens"] for o in ocr}
        records = formats.parse(
            name, entry["ann_path"], entry["image_root"], **entry["parse_options"]
        )
        for record in records:
            image_id = os.path.splitext(os.path.basename(record["image"]))[0]
            assert record["ocr_tokens"] == by_image[image_id]


def test_visdial_image_names_and_an_unknown_split(miniature, tmp_path):
    root, _ = miniature
    val = formats.parse(
        "visdial",
        os.path.join(root, "visdial/visdial_1.0_val.json"),
        os.path.join(root, "visdial/VisualDialog_val2018"),
    )
    assert all(os.path.basename(r["image"]).startswith("VisualDialog_val2018_0") for r in val)
    train = formats.parse(
        "visdial",
        os.path.join(root, "visdial/visdial_1.0_train.json"),
        os.path.join(root, "coco/images"),
    )
    assert all("/train2014/COCO_train2014_" in r["image"] for r in train)
    data = json.load(open(os.path.join(root, "visdial/visdial_1.0_val.json")))
    path = _write(tmp_path, "visdial.json", {**data, "split": "val"})
    with pytest.raises(formats.ParseError, match=r"split 'val' is not one of .*image_pattern"):
        formats.parse("visdial", path, root)


def test_llava_turns_become_examples_with_earlier_turns_as_context(miniature):
    root, manifest = miniature
    path = os.path.join(root, "LLaVA-Instruct-150K/conversation_58k.json")
    conversations = json.load(open(path))
    records = formats.parse("llava_instruct", path, os.path.join(root, "coco/images/train2017"))
    assert len(records) == sum(len(c["conversations"]) // 2 for c in conversations)
    assert max(len(c["conversations"]) for c in conversations) >= 4  # multi-turn
    last = records[len(conversations[0]["conversations"]) // 2 - 1]
    messages = conversations[0]["conversations"]
    assert last["question"] == messages[-2]["value"].replace("<image>", "").strip()
    assert last["answers"] == [messages[-1]["value"]]
    assert [q for q, _ in last["dialog"]][0] == messages[0]["value"].replace("<image>", "").strip()
    first = formats.parse(
        "llava_instruct", path, os.path.join(root, "coco/images/train2017"), turns="first"
    )
    assert len(first) == len(conversations)  # LAVIS's reading: the first turn only


def test_video_sets_read_the_video_files_or_frame_folders(tmp_path):
    from data_pipelines import layouts, registry
    from data_pipelines.miniature import write_miniature

    root = str(tmp_path / "mini")
    manifest = write_miniature(root, seed=1, frames=True)
    mapping = dict(
        line.split()[::-1] for line in open(os.path.join(root, "msvd/youtube_mapping.txt"))
    )
    for name in ("msvd_qa", "msrvtt_qa", "ivqa"):
        entry = layouts.entry(name, "eval", root)
        videos = formats.parse(
            registry.get(name).format,
            entry["ann_path"],
            entry["image_root"],
            **entry["parse_options"],
        )
        frames_entry = layouts.entry(name, "eval", root, frames=True)
        frames = formats.parse(
            registry.get(name).format,
            frames_entry["ann_path"],
            frames_entry["image_root"],
            **frames_entry["parse_options"],
        )
        assert len(videos) == len(frames) > 0
        for video, framed in zip(videos, frames):
            assert os.path.isfile(video["video"]) and "frames" not in video
            frame_dir = os.path.dirname(framed["frames"][0])
            assert manifest["datasets"][name]["media"][os.path.relpath(video["video"], root)][
                "frame_dir"
            ] == os.path.relpath(frame_dir, root)
        if name == "msvd_qa":  # video_id N -> the clip youtube_mapping.txt names vid<N>
            questions = json.load(open(entry["ann_path"]))
            for q, record in zip(questions, videos):
                clip = mapping[f"vid{q['video_id']}"]
                assert record["video"] == os.path.join(root, "msvd/YouTubeClips", clip + ".avi")
                assert set(record["choices"]) == {
                    e["answer"] for e in json.load(open(os.path.join(root, "msvd/train_qa.json")))
                }


def test_iconqa_eval_is_the_multiple_choice_with_text_subset(miniature):
    from data_pipelines import layouts

    root, _ = miniature
    entry = layouts.entry("iconqa", "eval", root)
    problems = json.load(open(entry["ann_path"]))
    records = formats.parse(
        "iconqa", entry["ann_path"], entry["image_root"], **entry["parse_options"]
    )
    assert {problems[r["id"]]["ques_type"] for r in records} == {"choose_txt"}
    assert records.report.num_skipped == sum(
        p["ques_type"] != "choose_txt" or p["split"] != "test" for p in problems.values()
    )


@pytest.mark.parametrize("name,split", [(n, s) for n, s in _layout_cases()])
def test_corrupt_miniature_faults_are_reported_not_fatal(corrupt_miniature, name, split):
    from data_pipelines import layouts, registry
    from data_pipelines.miniature import counts

    root, manifest = corrupt_miniature
    entry = layouts.entry(name, split, root)
    records = formats.parse(
        registry.get(name).format,
        entry["ann_path"],
        entry["image_root"],
        max_errors=None,
        **entry["parse_options"],
    )
    _, malformed = counts.expected_faults(manifest, name, split)
    assert records.report.num_errors == malformed
    assert len(records) == counts.expected_records(manifest, name, split)
    for fault in manifest["corrupted"].get(name, {}).get("malformed", []):
        if fault["split"] == counts.manifest_split(name, split):
            assert any(fault["where"] in m for m in records.report.messages)


@pytest.fixture(scope="module")
def corrupt_miniature(tmp_path_factory):
    from data_pipelines.miniature import write_miniature

    root = str(tmp_path_factory.mktemp("corrupt_miniature"))
    return root, write_miniature(root, seed=0, corrupt=True)
