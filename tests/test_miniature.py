"""The 26-dataset miniature: every dataset written in its published layout, files that parse,
media that decode, counts that match the files, and faults only on request.

`READERS` below read each dataset's files the way its publishers document them (independently of
the generator and of data_pipelines.formats): per split, the number of examples and the media
files the entries point at, resolved by the published naming rule.
"""

import csv
import json
import os
import subprocess
import sys
from collections import Counter

import av
import pytest
from PIL import Image

from data_pipelines import registry
from data_pipelines.miniature import CORRUPTED, DATASETS, write_miniature


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("miniature"))
    return root, write_miniature(root, seed=0, frames=True)


@pytest.fixture(scope="module")
def corrupt(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("corrupt"))
    return root, write_miniature(root, seed=0, corrupt=True)


def _json(root, relative):
    with open(os.path.join(root, relative), encoding="utf-8") as f:
        return json.load(f)


def _jsonl(root, relative):
    with open(os.path.join(root, relative), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _csv(root, relative):
    with open(os.path.join(root, relative), encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


# --- one reader per dataset: {split: (examples, [media paths relative to the root])} -----------


def _karpathy(root):
    out = {}
    for name in ("train", "val", "test"):
        rows = _json(root, f"coco/annotations/coco_karpathy_{name}.json")
        out[name] = (len(rows), [f"coco/images/{r['image']}" for r in rows])
    return out


def _capfilt(root):
    rows = _json(root, "capfilt/ccs_synthetic_filtered_large.json")
    shard = os.path.join(root, "capfilt/images/00000")
    by_url = {}
    for name in os.listdir(shard):
        if name.endswith(".json"):
            meta = _json(shard, name)
            by_url[meta["url"]] = f"capfilt/images/00000/{meta['key']}.jpg"
    return {"train": (len(rows), [by_url[r["url"]] for r in rows])}


def _textcaps(root):
    out = {}
    for name in ("train", "val"):
        data = _json(root, f"textcaps/TextCaps_0.1_{name}.json")["data"]
        media = [f"textcaps/train_images/{e['image_name']}.jpg" for e in data]
        out[name] = (len(data) if name == "train" else len({e["image_id"] for e in data}), media)
    return out


def _vqa(directory, prefix):
    def read(root):
        out = {}
        for name in ("train", "val"):
            sub = f"{name}2014"
            questions = _json(root, f"{directory}/{prefix}OpenEnded_mscoco_{sub}_questions.json")
            annotations = _json(root, f"{directory}/{prefix}mscoco_{sub}_annotations.json")
            assert questions["data_subtype"] == sub and len(annotations["annotations"]) >= len(
                questions["questions"]
            )
            media = [
                f"coco/images/{sub}/COCO_{sub}_{q['image_id']:012d}.jpg"
                for q in questions["questions"]
            ]
            out[name] = (len(questions["questions"]), media)
        return out

    return read


def _aokvqa(root):
    out = {}
    for name in ("train", "val"):
        rows = _json(root, f"aokvqa/aokvqa_v1p0_{name}.json")
        out[name] = (
            len(rows),
            [f"coco/images/{r['split']}2017/{r['image_id']:012d}.jpg" for r in rows],
        )
    return out


def _ocrvqa(root):
    data, out = _json(root, "ocrvqa/dataset.json"), {}
    for name, code in (("train", 1), ("test", 3)):
        books = {k: v for k, v in data.items() if v["split"] == code}
        media = [f"ocrvqa/images/{k}{os.path.splitext(v['imageURL'])[1]}" for k, v in books.items()]
        out[name] = (sum(len(v["questions"]) for v in books.values()), media)
    return out


def _llava(file):
    def read(root):
        rows = _json(root, f"LLaVA-Instruct-150K/{file}")
        return {"train": (len(rows), [f"coco/images/train2017/{r['image']}" for r in rows])}

    return read


def _nocaps(root):
    images = _json(root, "nocaps/nocaps_val_4500_captions.json")["images"]
    return {"val": (len(images), [f"nocaps/validation/{i['file_name']}" for i in images])}


def _flickr(root):
    images = _json(root, "flickr30k/dataset_flickr30k.json")["images"]
    out = {}
    for name in ("train", "test"):
        part = [i for i in images if i["split"] == name]
        count = sum(len(i["sentences"]) for i in part) if name == "train" else len(part)
        out[name] = (count, [f"flickr30k/flickr30k-images/{i['filename']}" for i in part])
    return out


def _gqa(root):
    out = {}
    for name in ("train", "testdev"):
        questions = _json(root, f"gqa/{name}_balanced_questions.json")
        out[name] = (len(questions), [f"gqa/images/{q['imageId']}.jpg" for q in questions.values()])
    return out


def _vsr(root):
    out = {}
    for name in ("train", "dev", "test"):
        rows = _jsonl(root, f"vsr/splits/zeroshot/{name}.jsonl")
        out[name] = (len(rows), [f"vsr/images/{r['image']}" for r in rows])
    return out


def _iconqa(root):
    problems = _json(root, "iconqa/iconqa_data/problems.json")
    pid_splits = _json(root, "iconqa/iconqa_data/pid_splits.json")
    out = {}
    for name in ("train", "test"):
        pids = [p for key, ps in pid_splits.items() if key.endswith(f"_{name}") for p in ps]
        media = []
        for pid in pids:
            folder = f"iconqa/iconqa_data/iconqa/{name}/{problems[pid]['ques_type']}/{pid}"
            media.append(f"{folder}/image.png")
            if problems[pid]["ques_type"] == "choose_img":
                media += [f"{folder}/{choice}" for choice in problems[pid]["choices"]]
        out[name] = (len(pids), media)
    return out


def _textvqa(root):
    out = {}
    for name in ("train", "val"):
        data = _json(root, f"textvqa/TextVQA_0.5.1_{name}.json")["data"]
        ocr = {
            e["image_id"]
            for e in _json(root, f"textvqa/TextVQA_Rosetta_OCR_v0.2_{name}.json")["data"]
        }
        assert {e["image_id"] for e in data} <= ocr  # every image has its OCR tokens
        out[name] = (len(data), [f"textvqa/train_images/{e['image_id']}.jpg" for e in data])
    return out


def _vizwiz(root):
    out = {}
    for name in ("train", "val"):
        rows = _json(root, f"vizwiz/Annotations/{name}.json")
        out[name] = (len(rows), [f"vizwiz/{name}/{r['image']}" for r in rows])
    return out


def _scienceqa(root):
    problems, pid_splits = (
        _json(root, "scienceqa/problems.json"),
        _json(root, "scienceqa/pid_splits.json"),
    )
    out = {}
    for name in ("train", "test"):
        pids = [p for p in pid_splits[name] if problems[p]["image"]]
        out[name] = (
            len(pids),
            [f"scienceqa/images/{name}/{p}/{problems[p]['image']}" for p in pids],
        )
    return out


def _msvd(root):
    with open(os.path.join(root, "msvd/youtube_mapping.txt"), encoding="utf-8") as f:
        clip_of = {vid: clip for clip, vid in (line.split() for line in f if line.strip())}
    out = {}
    for name in ("train", "val", "test"):
        rows = _json(root, f"msvd/{name}_qa.json")
        out[name] = (
            len(rows),
            [f"msvd/YouTubeClips/{clip_of['vid' + str(r['video_id'])]}.avi" for r in rows],
        )
    return out


def _msrvtt(root):
    out = {}
    for name in ("train", "val", "test"):
        rows = _json(root, f"msrvtt/{name}_qa.json")
        folder = "TestVideo" if name == "test" else "TrainValVideo"
        out[name] = (len(rows), [f"msrvtt/{folder}/video{r['video_id']}.mp4" for r in rows])
    return out


def _ivqa(root):
    out = {}
    for name in ("train", "val", "test"):
        rows = _csv(root, f"ivqa/{name}.csv")
        assert all(len([r[f"answer{k}"] for k in range(1, 6)]) == 5 for r in rows)
        out[name] = (
            len(rows),
            [f"ivqa/videos/{r['video_id']}_{r['start']}_{r['end']}.webm" for r in rows],
        )
    return out


def _visdial(root):
    out = {}
    for name in ("train", "val"):
        payload = _json(root, f"visdial/visdial_1.0_{name}.json")
        assert payload["version"] == "1.0" and payload["split"] == f"{name}2018"
        dialogs = payload["data"]["dialogs"]
        if name == "val":
            pattern = "visdial/VisualDialog_val2018/VisualDialog_val2018_{:012d}.jpg"
        else:
            pattern = "coco/images/train2014/COCO_train2014_{:012d}.jpg"
        out[name] = (
            sum(len(d["dialog"]) for d in dialogs),
            [pattern.format(d["image_id"]) for d in dialogs],
        )
    return out


def _hateful_memes(root):
    out = {}
    for name in ("train", "dev_seen", "dev_unseen"):
        rows = _jsonl(root, f"hateful_memes/data/{name}.jsonl")
        out[name] = (len(rows), [f"hateful_memes/data/{r['img']}" for r in rows])
    return out


READERS = {
    "coco_caption": _karpathy,
    "web_capfilt": _capfilt,
    "textcaps": _textcaps,
    "vqav2": _vqa("vqav2", "v2_"),
    "okvqa": _vqa("okvqa", ""),
    "aokvqa": _aokvqa,
    "ocrvqa": _ocrvqa,
    "llava_conversation": _llava("conversation_58k.json"),
    "llava_detail": _llava("detail_23k.json"),
    "llava_complex_reasoning": _llava("complex_reasoning_77k.json"),
    "nocaps": _nocaps,
    "flickr30k": _flickr,
    "gqa": _gqa,
    "vsr": _vsr,
    "iconqa": _iconqa,
    "textvqa": _textvqa,
    "vizwiz": _vizwiz,
    "scienceqa": _scienceqa,
    "msvd_qa": _msvd,
    "msrvtt_qa": _msrvtt,
    "ivqa": _ivqa,
    "visdial": _visdial,
    "hateful_memes": _hateful_memes,
}
DERIVED = {"vqav2_qg": "vqav2", "okvqa_qg": "okvqa", "aokvqa_qg": "aokvqa"}


# --- tests -------------------------------------------------------------------------------------


def _counts(manifest):
    return {
        name: {split_name: s["examples"] for split_name, s in entry["splits"].items()}
        for name, entry in manifest["datasets"].items()
    }


def test_all_26_datasets_of_the_registry(clean):
    _, manifest = clean
    paper = [n for n in registry.names() if registry.get(n).split in ("held_in", "held_out")]
    assert len(paper) == 26 and sorted(DATASETS) == sorted(paper) == sorted(manifest["datasets"])
    assert set(READERS) | set(DERIVED) == set(paper)
    for name, entry in manifest["datasets"].items():
        assert entry["held"] == {"held_in": "in", "held_out": "out"}[registry.get(name).split]
        assert entry["layout_source"] and entry["splits"]
    assert manifest["corrupted"] == {}


@pytest.mark.parametrize("name", sorted(READERS) + sorted(DERIVED))
def test_files_resolve_by_the_published_rules_and_counts_match(clean, name):
    root, manifest = clean
    entry = manifest["datasets"][name]
    for relative in entry["files"]:
        assert os.path.isfile(os.path.join(root, relative)), relative
    read = READERS[DERIVED.get(name, name)](root)
    assert set(read) == set(entry["splits"])
    referenced = set()
    for split_name, (count, media) in read.items():
        assert entry["splits"][split_name]["examples"] == count, (name, split_name)
        assert 1 <= count <= 12, (name, split_name, count)  # a handful, not a dataset
        referenced |= set(media)
    missing = [m for m in referenced if not os.path.isfile(os.path.join(root, m))]
    assert not missing, missing
    # Every written picture/clip is one an entry points at (the visdial train image is shared
    # COCO, written under visdial's media too).
    assert referenced == set(entry["media"])
    assert entry["derived_from"] == DERIVED.get(name)


def test_llava_conversations_are_multi_turn_with_the_image_token(clean):
    root, manifest = clean
    union = _json(root, "LLaVA-Instruct-150K/llava_instruct_150k.json")
    parts = ("conversation_58k.json", "detail_23k.json", "complex_reasoning_77k.json")
    assert union == [e for part in parts for e in _json(root, f"LLaVA-Instruct-150K/{part}")]
    for entry in union:
        turns = entry["conversations"]
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
        first = turns[0]["value"]
        assert first.startswith("<image>\n") or first.endswith("\n<image>")
        assert all("<image>" not in t["value"] for t in turns[1:])
        assert entry["id"] == entry["image"].removesuffix(".jpg") and len(entry["id"]) == 12
    conversation = _json(root, "LLaVA-Instruct-150K/conversation_58k.json")
    assert {len(e["conversations"]) // 2 for e in conversation} == {2, 3}
    assert {e["conversations"][0]["value"].startswith("<image>") for e in union} == {True, False}
    assert manifest["datasets"]["llava_conversation"]["splits"]["train"]["turns"] == 5


def test_images_decode_in_the_modes_the_real_sets_have(clean):
    root, manifest = clean
    seen = Counter()
    for name, entry in manifest["datasets"].items():
        for relative, media in entry["media"].items():
            if media["kind"] != "image":
                continue
            with Image.open(os.path.join(root, relative)) as image:
                image.load()
                assert (image.format, image.mode) == (media["format"], media["mode"]), relative
                assert 8 <= max(image.size) <= 96
            seen[name.split("_qg")[0], media["format"], media["mode"]] += 1
    assert seen["coco_caption", "JPEG", "L"] >= 1  # COCO has grayscale JPEGs
    assert seen["iconqa", "PNG", "RGBA"] and seen["iconqa", "PNG", "P"]
    assert seen["scienceqa", "PNG", "RGBA"] and seen["hateful_memes", "PNG", "RGBA"]
    assert all(
        fmt == "JPEG" for (name, fmt, _) in seen if name in ("vqav2", "gqa", "visdial", "nocaps")
    )


def test_videos_decode_with_pyav_to_the_written_frames(clean):
    root, manifest = clean
    containers = Counter()
    for name in ("msvd_qa", "msrvtt_qa", "ivqa"):
        for relative, media in manifest["datasets"][name]["media"].items():
            with av.open(os.path.join(root, relative)) as container:
                stream = container.streams.video[0]
                frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
                assert stream.codec_context.name == media["codec"]
            assert len(frames) == media["frames"] == 12 and frames[0].shape == (48, 64, 3)
            assert (
                abs(frames[0].astype(int) - frames[-1].astype(int)).mean() > 5
            )  # the camera moves
            frame_dir = os.path.join(root, media["frame_dir"])
            assert sorted(os.listdir(frame_dir)) == [f"{i:05d}.jpg" for i in range(1, 13)]
            containers[name, os.path.splitext(relative)[1], media["codec"]] += 1
    assert set(containers) == {
        ("msvd_qa", ".avi", "mpeg4"),
        ("msrvtt_qa", ".mp4", "h264"),
        ("ivqa", ".webm", "vp9"),
    }


def test_deterministic_in_the_seed(clean, tmp_path):
    root, manifest = clean
    again = write_miniature(str(tmp_path / "again"), seed=0)
    other = write_miniature(str(tmp_path / "other"), seed=1)
    for relative in (
        "vqav2/v2_OpenEnded_mscoco_train2014_questions.json",
        "ivqa/test.csv",
        "visdial/visdial_1.0_val.json",
    ):
        text = open(os.path.join(root, relative)).read()
        assert text == open(tmp_path / "again" / relative).read()
        assert text != open(tmp_path / "other" / relative).read()
    assert again["datasets"]["nocaps"]["media"] == manifest["datasets"]["nocaps"]["media"]
    assert _counts(other) == _counts(manifest)  # the seed changes ids and texts, never the counts


def test_corrupt_adds_one_unreadable_file_and_one_malformed_entry(clean, corrupt):
    root, manifest = corrupt
    assert sorted(manifest["corrupted"]) == sorted(CORRUPTED)
    assert _counts(manifest) == _counts(clean[1])
    for name, faults in manifest["corrupted"].items():
        assert len(faults["unreadable"]) == 1 and len(faults["malformed"]) == 1
        path = os.path.join(root, faults["unreadable"][0]["path"])
        with pytest.raises(Exception):  # noqa: B017 - PIL and PyAV raise their own errors
            if path.endswith((".avi", ".mp4", ".webm")):
                with av.open(path) as container:
                    list(container.decode(video=0))
            else:
                Image.open(path).load()
        split_entry = manifest["datasets"][name]["splits"][faults["malformed"][0]["split"]]
        assert split_entry["malformed"] == 1 and split_entry["unreadable"] == [
            faults["unreadable"][0]["path"]
        ]
    with open(os.path.join(root, "hateful_memes/data/dev_seen.jsonl")) as f:
        lines = f.read().splitlines()
    with pytest.raises(json.JSONDecodeError):
        json.loads(lines[2])
    assert (
        sum("image" not in row for row in _json(root, "coco/annotations/coco_karpathy_train.json"))
        == 1
    )
    assert "99999" in _json(root, "scienceqa/problems.json")
    assert sum("video_id" not in row for row in _json(root, "msvd/test_qa.json")) == 1
    annotations = _json(root, "vqav2/v2_mscoco_train2014_annotations.json")["annotations"]
    assert sum(not isinstance(a["answers"], list) for a in annotations) == 1


def test_command_line_writes_the_manifest_and_refuses_a_non_empty_directory(tmp_path):
    out = tmp_path / "mini"
    command = [sys.executable, "-m", "data_pipelines.miniature", f"--out={out}"]
    done = subprocess.run(
        command, capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__))
    )
    assert done.returncode == 0, done.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(manifest["datasets"]) == sorted(DATASETS) and "visdial" in done.stdout
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(out) for f in files)
    assert size < 5 * 2**20
    again = subprocess.run(
        command, capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__))
    )
    assert again.returncode != 0 and "not empty" in again.stderr
