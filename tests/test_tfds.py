"""TFDS datasets: `prepare` writes them, the pipelines read them (real TFDS, no TensorFlow).

The annotation files and the TFDS datasets `prepare` makes of them must give the same batches;
the files must be TFDS datasets any TFDS reader opens (a fresh Python that never imports
TensorFlow); `prepare` skips finished splits and spreads the media over its workers.
"""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from configs import data_demo
from data_pipelines import (
    demo_data,
    eval_pipeline,
    layouts,
    prepare,
    preprocess,
    registry,
    sources,
    tfds_data,
    train_pipeline,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_ARG = "num_train=40,num_eval=10"


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("demo"))
    demo_data.ensure_demo_dataset(root, num_train=40, num_eval=10, seed=0)
    return root


@pytest.fixture(scope="module")
def demo_tfds(demo_root, tmp_path_factory):
    """Every demo entry prepared with two workers; (out dir, summaries)."""
    out = str(tmp_path_factory.mktemp("demo_tfds"))
    summaries = prepare.prepare_config(make_config(f"root={demo_root}"), out, num_workers=2)
    return out, summaries


def make_config(arg, **overrides):
    config = data_demo.get_config(f"{arg},{DEMO_ARG}")
    config.update(global_batch_size=8, eval_batch_size=8, prefetch_batches=0, **overrides)
    return config


def take(dataset, n):
    iterator = iter(dataset)
    return [next(iterator) for _ in range(n)]


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            if key == "meta":
                assert x[key] == y[key]
            else:
                np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_prepare_writes_one_tfds_dataset_per_dataset_and_split(demo_tfds):
    out, summaries = demo_tfds
    assert [(s["dataset"], s["split"], s["status"]) for s in summaries] == [
        ("demo_vqa", "train", "prepared"),
        ("demo_caption", "train", "prepared"),
        ("demo_mc", "train", "prepared"),
        ("demo_qg", "train", "prepared"),
        ("demo_vqa", "eval", "prepared"),
        ("demo_caption", "eval", "prepared"),
        ("demo_mc", "eval", "prepared"),
    ]
    for summary in summaries:
        directory = os.path.join(out, summary["dataset"], summary["split"], "1.0.0")
        assert summary["tfds_dir"] == directory and summary["num_skipped"] == 0
        files = os.listdir(directory)
        assert {"dataset_info.json", "features.json", "metadata.json"} <= set(files)
        assert any(".array_record-" in f for f in files)
        builder = tfds.builder_from_directory(directory)
        assert list(builder.info.splits) == [summary["split"]]
        assert builder.info.splits[summary["split"]].num_examples == summary["num_examples"]
        assert isinstance(builder.info.features["image"], tfds.features.Image)


def test_train_batches_from_tfds_equal_those_from_annotation_files(demo_root, demo_tfds):
    out, _ = demo_tfds
    build = lambda c: train_pipeline.build_train_dataset(c, process_index=0, process_count=1)  # noqa: E731
    from_files = take(build(make_config(f"root={demo_root}")), 4)
    from_tfds = take(build(make_config(f"tfds={out}")), 4)
    assert_batches_equal(from_files, from_tfds)
    # Grain worker processes get the TFDS records pickled and re-open the dataset.
    assert_batches_equal(from_files[:2], take(build(make_config(f"tfds={out}", worker_count=1)), 2))


def test_eval_batches_from_tfds_equal_those_from_annotation_files(demo_root, demo_tfds):
    out, _ = demo_tfds
    for name in ("demo_vqa", "demo_mc", "demo_caption"):
        from_files = list(
            eval_pipeline.build_eval_dataset(make_config(f"root={demo_root}"), name, "eval")
        )
        from_tfds = list(eval_pipeline.build_eval_dataset(make_config(f"tfds={out}"), name, "eval"))
        assert len(from_files) == {"demo_caption": 2}.get(name, 4)  # 10 or 30 examples, by 8
        assert_batches_equal(from_files, from_tfds)


def test_check_reads_tfds_entries(demo_tfds):
    from data_pipelines import check

    out, summaries = demo_tfds
    rows = check.check_config(make_config(f"tfds={out}"), sample=4)
    assert [(r.name, r.split, r.examples) for r in rows] == [
        (s["dataset"], s["split"], s["num_examples"]) for s in summaries
    ]
    assert all(r.status == "ok" and r.decoded == 4 and r.unreadable == 0 for r in rows), rows


def test_prepare_is_idempotent_per_split(demo_root, tmp_path):
    config = make_config(f"root={demo_root}")
    entry, other = dict(config.eval_datasets[0]), dict(config.eval_datasets[1])
    first = prepare.prepare_entry(entry, str(tmp_path))
    assert first["status"] == "prepared" and first["num_examples"] == 30
    directory = first["tfds_dir"]
    stamps = {f: os.stat(os.path.join(directory, f)).st_mtime_ns for f in os.listdir(directory)}
    # An interrupted run of another split leaves TFDS's partial directory behind.
    stale = tmp_path / "demo_caption" / "eval" / "incomplete.ABC123_1.0.0"
    stale.mkdir(parents=True)
    (stale / "demo_caption-eval.array_record-00000-of-00001").write_bytes(b"partial")
    again = prepare.prepare_entry(entry, str(tmp_path))
    assert again["status"] == "exists" and again["num_examples"] == 30
    assert stamps == {f: os.stat(os.path.join(directory, f)).st_mtime_ns for f in stamps}
    resumed = prepare.prepare_entry(other, str(tmp_path))
    assert resumed["status"] == "prepared" and not stale.exists()
    assert len(sources.load_records(resumed["entry"])) == 10
    moved = dict(entry, ann_path=other["ann_path"])
    with pytest.raises(ValueError, match="was prepared from .*delete the directory"):
        prepare.prepare_entry(moved, str(tmp_path))


def test_prepare_skips_unreadable_media_and_names_them(demo_root, tmp_path):
    rows = json.load(open(os.path.join(demo_root, "annotations", "vqa_eval.json")))
    images_dir = tmp_path / "images"
    images_dir.mkdir()
    for row in rows:
        src = os.path.join(demo_root, "images", row["image"])
        (images_dir / os.path.basename(row["image"])).write_bytes(open(src, "rb").read())
        row["image"] = os.path.basename(row["image"])
    (images_dir / rows[3]["image"]).write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (tmp_path / "vqa.json").write_text(json.dumps(rows))
    entry = {
        "name": "demo_vqa",
        "split": "eval",
        "ann_path": str(tmp_path / "vqa.json"),
        "image_root": str(images_dir),
    }
    summary = prepare.prepare_entry(entry, str(tmp_path / "out"), max_bad_fraction=0.1)
    assert summary["num_skipped"] == 3 and summary["num_examples"] == len(rows) - 3  # 3 per image
    metadata = tfds.builder_from_directory(summary["tfds_dir"]).info.metadata
    assert metadata["num_skipped"] == 3 and rows[3]["image"] in metadata["skipped"][0]
    with pytest.raises(ValueError, match="unreadable"):
        prepare.prepare_entry(entry, str(tmp_path / "strict"), max_bad_fraction=0.01)


def test_prepare_spreads_the_media_over_its_workers(demo_root, tmp_path, monkeypatch):
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    to_example = tfds_data.to_example

    def recording(record, fields):
        (pid_dir / str(os.getpid())).touch()
        return to_example(record, fields)

    monkeypatch.setattr(tfds_data, "to_example", recording)
    entry = dict(make_config(f"root={demo_root}").datasets[0])
    one = prepare.prepare_entry(entry, str(tmp_path / "one"), num_workers=1)
    assert os.listdir(pid_dir) == [str(os.getpid())]
    os.remove(pid_dir / str(os.getpid()))
    two = prepare.prepare_entry(entry, str(tmp_path / "two"), num_workers=2)
    pids = set(os.listdir(pid_dir))
    assert len(pids) == 2 and str(os.getpid()) not in pids
    a = sources.load_records(one["entry"])
    b = sources.load_records(two["entry"])
    assert len(a) == len(b) == 120 and all(a[i] == b[i] for i in range(len(a)))


FRESH_READER = """
import json, sys
import numpy as np
import tensorflow_datasets as tfds
from PIL import Image
out, name, split = sys.argv[1:]
by_name = tfds.data_source(f"{name}/{split}", split=split, data_dir=out)
by_dir = tfds.builder_from_directory(f"{out}/{name}/{split}/1.0.0").as_data_source(split)
assert len(by_name) == len(by_dir) > 0
for i in (0, len(by_name) - 1):
    example = by_name[i]
    with Image.open(example["source_paths"][0].decode()) as original:
        expected = np.asarray(original.convert("RGB"))
    assert np.array_equal(example["image"], expected) and np.array_equal(by_dir[i]["image"], expected)
raw = tfds.builder_from_directory(f"{out}/{name}/{split}/1.0.0").as_data_source(
    split, decoders={"image": tfds.decode.SkipDecoding()})[0]
with open(raw["source_paths"][0].decode(), "rb") as f:
    assert raw["image"] == f.read()  # the file's bytes, not re-encoded
print(json.dumps({"n": len(by_name), "question": example["question"].decode(),
                  "tensorflow": "tensorflow" in sys.modules}))
"""


def test_cli_prepares_with_progress_and_a_fresh_python_reads_it_without_tensorflow(
    demo_root, tmp_path
):
    out = str(tmp_path / "out")
    command = [
        sys.executable,
        "-m",
        "data_pipelines.prepare",
        f"--config=configs/demo.py:root={demo_root},{DEMO_ARG}",
        f"--out={out}",
        "--num_workers=2",
    ]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    assert [line["status"] for line in lines] == ["prepared"] * 7
    assert "prepare demo_vqa/train" in run.stderr and "ex/s" in run.stderr  # tqdm's bar
    rerun = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert [json.loads(line)["status"] for line in rerun.stdout.splitlines()] == ["exists"] * 7
    reader = subprocess.run(
        [sys.executable, "-c", FRESH_READER, out, "demo_vqa", "eval"],
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert reader.returncode == 0, reader.stderr[-3000:]
    result = json.loads(reader.stdout.splitlines()[-1])
    assert result["n"] == 30 and result["question"] and result["tensorflow"] is False


def test_every_miniature_dataset_round_trips(tmp_path):
    """The 26 datasets' published layouts (images, frame folders, video files, dialogs, OCR
    tokens, choices) -> TFDS -> the same records, media as the files' bytes, same pixels."""
    from data_pipelines.miniature import write_miniature

    root, out = str(tmp_path / "mini"), str(tmp_path / "tfds")
    write_miniature(root, seed=0)
    config = make_config(f"root={root}", image_size=32)
    checked = set()
    for name in sorted(layouts.LAYOUTS):
        for split in layouts.splits_of(name):
            entry = layouts.entry(name, split, root)
            summary = prepare.prepare_entry(entry, out)
            parsed = sources.load_records(entry)
            prepared = sources.load_records(summary["entry"])
            assert len(parsed) == len(prepared) == summary["num_examples"] > 0
            pre = preprocess.ExamplePreprocessor(config, registry.get(name), train=False)
            for original, record in zip(parsed, prepared):
                expected = dict(original)
                media = {}
                for field, key in tfds_data.MEDIA_KEYS.items():
                    if field in expected:
                        path = expected.pop(field)
                        media[key] = [_read(p) for p in path] if field == "frames" else _read(path)
                assert {k: v for k, v in record.items() if k != "source_paths"} == {
                    **expected,
                    **media,
                }, (name, split)
                np.testing.assert_array_equal(
                    pre.pixels(record, None), pre.pixels(original, None), err_msg=name
                )
                checked.update(k for k in media)
    assert checked == {"image_bytes", "video_bytes"}
    frames_root = str(tmp_path / "mini_frames")
    write_miniature(frames_root, seed=0, frames=True)
    entry = layouts.entry("msvd_qa", "eval", frames_root, frames=True)
    original = sources.load_records(entry)[0]
    record = sources.load_records(prepare.prepare_entry(entry, str(tmp_path / "f"))["entry"])[0]
    assert len(record["frame_bytes"]) > 4 and "video_bytes" not in record
    pre = preprocess.ExamplePreprocessor(config, registry.get("msvd_qa"), train=False)
    np.testing.assert_array_equal(pre.pixels(record, None), pre.pixels(original, None))


def _read(path):
    with open(path, "rb") as f:
        return f.read()


class _Foreign(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A TFDS dataset made elsewhere: its own feature names, an answer as one string, the
    image once as encoded bytes and once decoded."""

    VERSION = tfds.core.Version("2.0.0")
    code_path = None

    def __init__(self, rows, image_root, **kwargs):
        self.name = "foreign_vqa"
        self._rows, self._image_root = rows, image_root
        super().__init__(**kwargs)

    def _info(self):
        features = tfds.features
        return tfds.core.DatasetInfo(
            builder=self,
            disable_shuffling=True,
            features=features.FeaturesDict(
                {
                    "jpg": features.Image(),
                    "pixels": features.Tensor(shape=(64, 64, 3), dtype=np.uint8),
                    "query": features.Text(),
                    "answer": features.Text(),
                    "extra": features.Scalar(np.int64),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        return {"validation": self._generate_examples()}

    def _generate_examples(self):
        for i, row in enumerate(self._rows):
            path = os.path.join(self._image_root, row["image"])
            yield (
                i,
                {
                    "jpg": path,
                    "pixels": np.asarray(Image.open(path).convert("RGB")),
                    "query": row["question"],
                    "answer": row["answer"][0],
                    "extra": i,
                },
            )


def test_a_tfds_dataset_made_elsewhere_is_read_through_a_field_mapping(demo_root, tmp_path):
    rows = json.load(open(os.path.join(demo_root, "annotations", "vqa_eval.json")))[:5]
    image_root = os.path.join(demo_root, "images")
    data_dir = str(tmp_path / "tfds")
    _Foreign(rows, image_root, data_dir=data_dir, file_format="array_record").download_and_prepare()
    entry = {
        "name": "demo_vqa",
        "split": "eval",
        "tfds": "foreign_vqa",
        "tfds_data_dir": data_dir,
        "tfds_split": "validation",
        "tfds_fields": {"image": "jpg", "question": "query", "answers": "answer"},
    }
    records = sources.load_records(entry)
    assert len(records) == 5
    for i, (row, record) in enumerate(zip(rows, records)):
        assert record == {
            "dataset": "demo_vqa",
            "id": str(i),
            "image_bytes": _read(os.path.join(image_root, row["image"])),
            "question": row["question"],
            "answers": [row["answer"][0]],
        }
    decoded = sources.load_records(
        dict(entry, tfds_fields={**entry["tfds_fields"], "image": "pixels"})
    )
    with Image.open(os.path.join(image_root, rows[0]["image"])) as image:
        expected = np.asarray(image.convert("RGB"))
    with Image.open(io.BytesIO(decoded[0]["image_bytes"])) as png:
        np.testing.assert_array_equal(np.asarray(png), expected)  # stored as lossless PNG
    with pytest.raises(KeyError, match="none of the features .* is image"):
        sources.load_records({k: v for k, v in entry.items() if k != "tfds_fields"})
    with pytest.raises(KeyError, match=r"no feature\(s\) \['img'\]"):
        sources.load_records(dict(entry, tfds_fields={"image": "img"}))
    with pytest.raises(ValueError, match="no split 'eval'; it has \\['validation'\\]"):
        sources.load_records({k: v for k, v in entry.items() if k != "tfds_split"})
    with pytest.raises(FileNotFoundError, match="no TFDS dataset in directory"):
        sources.load_records(dict(entry, tfds=str(tmp_path)))
