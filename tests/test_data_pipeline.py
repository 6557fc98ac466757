"""The Grain pipelines end to end on the embedded demo data (real files, real Grain)."""

import json
import logging
import os
import shutil

import grain
import numpy as np
import pytest
from PIL import Image

from configs import data_demo, evals
from data_pipelines import (
    demo_data,
    eval_pipeline,
    mixing,
    preprocess,
    sources,
    train_pipeline,
)
from ib_jax.contract.batch import TRAIN_KEYS


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("demo"))
    demo_data.ensure_demo_dataset(root, num_train=40, num_eval=10, seed=0)
    return root


def make_config(root, **overrides):
    config = data_demo.get_config(f"root={root}", num_train=40, num_eval=10)
    config.global_batch_size = 8
    config.eval_batch_size = 8
    config.prefetch_batches = 0
    config.update(overrides)
    return config


def take(dataset, n):
    iterator = iter(dataset)
    return [next(iterator) for _ in range(n)]


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_train_batch_matches_the_contract(demo_root):
    config = make_config(demo_root)
    batch = take(train_pipeline.build_train_dataset(config, process_index=0, process_count=1), 1)[0]
    assert set(batch) == set(TRAIN_KEYS)
    assert (
        batch["pixel_values"].shape == (8, 64, 64, 3) and batch["pixel_values"].dtype == np.float32
    )
    for key, length in (("qformer_input_ids", 48), ("input_ids", 48), ("labels", 24)):
        assert batch[key].shape == (8, length) and batch[key].dtype == np.int32, key
    assert (batch["qformer_input_ids"][:, 0] == 2).all()  # [CLS] of the demo vocab
    assert ((batch["qformer_input_ids"] != 0) == (batch["qformer_attention_mask"] == 1)).all()
    assert ((batch["input_ids"] != 0) == (batch["attention_mask"] == 1)).all()
    for row, mask in zip(batch["input_ids"], batch["attention_mask"]):
        assert row[mask.sum() - 1] == 1  # instruction ends with </s>
    for labels in batch["labels"]:
        real = labels[labels != -100]
        assert real[-1] == 1 and (labels[len(real) :] == -100).all()


def test_deterministic_and_resumes_exactly(demo_root):
    config = make_config(demo_root, prefetch_batches=2)
    build = lambda c: train_pipeline.build_train_dataset(c, process_index=0, process_count=1)  # noqa: E731
    assert_batches_equal(take(build(config), 3), take(build(config), 3))
    other = make_config(demo_root, seed=1)
    assert not np.array_equal(
        take(build(config), 1)[0]["input_ids"], take(build(other), 1)[0]["input_ids"]
    )

    iterator = iter(build(config))
    for _ in range(7):  # past one epoch of the smallest dataset (40 captions-images / 8)
        next(iterator)
    state = iterator.get_state()
    json.dumps(state)  # Orbax/grain checkpoints store the state as JSON
    expected = [next(iterator) for _ in range(3)]
    resumed = iter(build(config))
    resumed.set_state(state)
    assert_batches_equal([next(resumed) for _ in range(3)], expected)


def test_worker_processes_are_deterministic_and_resumable(demo_root):
    config = make_config(demo_root, worker_count=2)
    dataset = train_pipeline.build_train_dataset(config, process_index=0, process_count=1)
    iterator = iter(dataset)
    first = [next(iterator) for _ in range(2)]
    state = iterator.get_state()
    expected = [next(iterator) for _ in range(2)]
    iterator.close()
    again = iter(train_pipeline.build_train_dataset(config, process_index=0, process_count=1))
    assert_batches_equal([next(again) for _ in range(2)], first)
    again.set_state(state)
    assert_batches_equal([next(again) for _ in range(2)], expected)
    again.close()


def test_processes_read_disjoint_shards(demo_root):
    config = make_config(demo_root)
    seen = []
    for process_index in range(2):
        batch = take(
            train_pipeline.build_train_dataset(
                config, process_index=process_index, process_count=2
            ),
            1,
        )[0]
        assert batch["pixel_values"].shape[0] == 4  # global 8 // 2 processes
        stream, _ = train_pipeline.build_train_examples(
            config, process_index=process_index, process_count=2, keep_text=True
        )
        seen.append({(e["_dataset"], e["_id"]) for e in take(stream, 120)})
    assert seen[0] and seen[1] and not seen[0] & seen[1]
    with pytest.raises(ValueError, match="not divisible"):
        train_pipeline.build_train_dataset(
            make_config(demo_root, global_batch_size=9), process_index=0, process_count=2
        )


def test_mixture_proportions_match_sqrt_size_weights():
    """Grain's mix over streams of the sizes and multipliers of a realistic config."""
    sizes = {"vqav2": 443_757, "okvqa": 9_009, "aokvqa": 17_056, "coco_caption": 566_747}
    multipliers = {"okvqa": 2.0, "aokvqa": 0.5}
    weights = mixing.mixture_weights(sizes, multipliers)
    expected = {n: np.sqrt(s) * multipliers.get(n, 1.0) for n, s in sizes.items()}
    total = sum(expected.values())
    for name in sizes:
        assert weights[name] == pytest.approx(expected[name] / total)
    streams = {n: grain.MapDataset.source([n]).repeat() for n in sizes}
    drawn = take(mixing.mix(streams, weights), 5000)
    for name in sizes:
        assert drawn.count(name) / 5000 == pytest.approx(weights[name], abs=0.005), name


def test_realized_mixture_in_the_real_pipeline(demo_root):
    from data_pipelines import preview

    config = make_config(demo_root, image_size=16)
    lines = list(preview.preview_examples(config, 240))
    assert len(lines) == 241 and all(json.dumps(line) for line in lines)
    assert {"dataset", "instruction", "target", "image_shape"} <= set(lines[0])
    for name, row in lines[-1]["mixture"].items():
        assert row["realized"] == pytest.approx(row["target"], abs=0.02), name


def corrupt_copy(demo_root, tmp_path, bad_every):
    """A copy of the demo whose every `bad_every`-th training image is missing, truncated or junk."""
    root = str(tmp_path / "corrupt")
    shutil.copytree(demo_root, root)
    train_dir = os.path.join(root, "images", "train")
    broken = []
    for i, name in enumerate(sorted(os.listdir(train_dir))):
        if i % bad_every:
            continue
        path = os.path.join(train_dir, name)
        kind = (i // bad_every) % 3
        if kind == 0:
            os.remove(path)
        elif kind == 1:
            data = open(path, "rb").read()
            open(path, "wb").write(data[: len(data) // 3])
        else:
            open(path, "wb").write(b"junk")
        broken.append(path)
    return root, broken


def test_bad_images_are_skipped_counted_and_logged(demo_root, tmp_path, caplog):
    root, broken = corrupt_copy(demo_root, tmp_path, bad_every=20)  # 5% bad
    config = make_config(root, max_bad_fraction=0.2, bad_fraction_min_examples=10)
    iterator = iter(train_pipeline.build_train_dataset(config, process_index=0, process_count=1))
    with caplog.at_level(logging.WARNING, logger="data_pipelines.train_pipeline"):
        batches = [next(iterator) for _ in range(10)]
    assert all(b["pixel_values"].shape[0] == 8 for b in batches)
    counts = train_pipeline.find_guard(iterator).counts
    assert counts["bad"] > 0 and counts["seen"] == counts["bad"] + sum(
        counts["per_dataset"].values()
    )
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert any(os.path.basename(p) in logged for p in broken)

    strict = make_config(root, max_bad_fraction=0.01, bad_fraction_min_examples=10)
    with pytest.raises(preprocess.BadDataError, match="max_bad_fraction"):
        take(train_pipeline.build_train_dataset(strict, process_index=0, process_count=1), 30)


def test_bad_images_in_worker_processes_reach_the_main_process(demo_root, tmp_path):
    root, _ = corrupt_copy(demo_root, tmp_path, bad_every=2)  # 50% bad
    config = make_config(root, worker_count=1, max_bad_fraction=0.1, bad_fraction_min_examples=10)
    iterator = iter(train_pipeline.build_train_dataset(config, process_index=0, process_count=1))
    with pytest.raises(preprocess.BadDataError, match="were bad"):
        for _ in range(20):
            next(iterator)
    iterator.close()


def test_malformed_annotations_are_counted_then_stop(demo_root, tmp_path):
    rows = json.load(open(os.path.join(demo_root, "annotations", "vqa_train.json")))
    for row in rows[:3]:
        del row["question"]
    path = tmp_path / "vqa.json"
    path.write_text(json.dumps(rows))
    entry = {
        "name": "demo_vqa",
        "ann_path": str(path),
        "image_root": os.path.join(demo_root, "images"),
    }
    assert len(sources.load_records(entry, max_bad_fraction=0.05)) == len(rows) - 3
    with pytest.raises(ValueError, match="3 of .* are malformed"):
        sources.load_records(entry, max_bad_fraction=0.01)


def test_startup_errors_name_the_problem(demo_root, tmp_path):
    images = os.path.join(demo_root, "images")
    ann = os.path.join(demo_root, "annotations", "vqa_train.json")

    def build(entry):
        return train_pipeline.build_train_dataset(
            make_config(demo_root, datasets=[entry]), process_index=0, process_count=1
        )

    with pytest.raises(KeyError, match="unknown dataset 'vqa_v3'"):
        build({"name": "vqa_v3", "ann_path": ann, "image_root": images})
    with pytest.raises(FileNotFoundError, match="nowhere/images"):
        build({"name": "demo_vqa", "ann_path": ann, "image_root": "/nowhere/images"})
    with pytest.raises(FileNotFoundError, match="missing.json"):
        build(
            {"name": "demo_vqa", "ann_path": str(tmp_path / "missing.json"), "image_root": images}
        )
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(ValueError, match="demo_vqa.*empty split"):
        build({"name": "demo_vqa", "ann_path": str(tmp_path / "empty.json"), "image_root": images})
    with pytest.raises(KeyError, match="no eval dataset 'demo_vqa' split 'test'"):
        eval_pipeline.build_eval_dataset(make_config(demo_root), "demo_vqa", "test")


def test_eval_covers_every_example_once_with_padding(demo_root):
    config = make_config(demo_root, eval_batch_size=8)
    all_ids = [r["id"] for r in sources.load_records(config.eval_datasets[0])]
    assert len(all_ids) == 30  # 10 images x 3 questions
    seen, batch_counts = [], []
    for process_index in range(2):
        batches = list(
            eval_pipeline.build_eval_dataset(
                config,
                "demo_vqa",
                "eval",
                process_index=process_index,
                process_count=2,
                prompt=evals.PROTOCOL["demo_vqa"]["prompt"],  # the declared evaluation's
            )
        )
        batch_counts.append(len(batches))
        for batch in batches:
            assert batch["pixel_values"].shape == (4, 64, 64, 3) and "labels" not in batch
            seen += [i for i, v in zip(batch["meta"]["id"], batch["valid"]) if v]
            assert all(
                inst.startswith("Question: ") and inst.endswith(" Short answer:")
                for inst in batch["meta"]["instruction"]
            )
    assert batch_counts[0] == batch_counts[1] == 4  # ceil(15 / 4): processes stay in lockstep
    assert sorted(seen) == sorted(all_ids)


def test_video_clips_sample_frames_uniformly(tmp_path):
    root = tmp_path / "msvd"
    for video in (1, 2):
        (root / "frames" / f"vid{video}").mkdir(parents=True)
        for f in range(10):
            Image.new("RGB", (40, 30), (25 * f, 80 * video, 0)).save(
                root / "frames" / f"vid{video}" / f"{f:05d}.jpg"
            )
    (root / "qa.json").write_text(
        json.dumps(
            [
                {"id": 0, "question": "what is red?", "answer": "car", "video_id": 1},
                {"id": 1, "question": "who runs?", "answer": "man", "video_id": 2},
            ]
        )
    )
    config = make_config(str(tmp_path), image_size=16, num_frames=4, eval_batch_size=2)
    config.eval_datasets = [
        {
            "name": "msvd_qa",
            "split": "test",
            "ann_path": str(root / "qa.json"),
            "image_root": str(root / "frames"),
        }
    ]
    batch = next(iter(eval_pipeline.build_eval_dataset(config, "msvd_qa", "test")))
    assert batch["pixel_values"].shape == (2, 4, 16, 16, 3)
    assert batch["meta"]["answers"] == [["car"], ["man"]]
    # frames 1, 3, 6, 8 of 10 (segment centres): the red channel rises across the clip
    red = batch["pixel_values"][0, :, 8, 8, 0]
    assert (np.diff(red) > 0).all()


def test_augmentation_switch(demo_root):
    plain = take(
        train_pipeline.build_train_dataset(
            make_config(demo_root), process_index=0, process_count=1
        ),
        1,
    )[0]
    config = make_config(demo_root, augment=True)
    augmented = take(
        train_pipeline.build_train_dataset(config, process_index=0, process_count=1), 1
    )[0]
    again = take(train_pipeline.build_train_dataset(config, process_index=0, process_count=1), 1)[0]
    np.testing.assert_array_equal(augmented["input_ids"], plain["input_ids"])  # same examples
    assert not np.array_equal(augmented["pixel_values"], plain["pixel_values"])
    np.testing.assert_array_equal(augmented["pixel_values"], again["pixel_values"])


def test_eval_with_more_processes_than_examples(demo_root, tmp_path):
    rows = json.load(open(os.path.join(demo_root, "annotations", "vqa_eval.json")))[:2]
    (tmp_path / "two.json").write_text(json.dumps(rows))
    config = make_config(demo_root, eval_batch_size=4)
    config.eval_datasets = [
        {
            "name": "demo_vqa",
            "split": "tiny",
            "ann_path": str(tmp_path / "two.json"),
            "image_root": os.path.join(demo_root, "images"),
        }
    ]
    valid = []
    for process_index in range(4):
        batches = list(
            eval_pipeline.build_eval_dataset(
                config, "demo_vqa", "tiny", process_index=process_index, process_count=4
            )
        )
        assert len(batches) == 1 and batches[0]["pixel_values"].shape == (1, 64, 64, 3)
        valid.append(int(batches[0]["valid"][0]))
    assert valid == [1, 1, 0, 0]


def test_video_files_decode_to_uniformly_sampled_frames_of_the_clip(tmp_path):
    """A miniature clip (a camera pan over a photograph) read through the pipeline: 4 frames at
    the uniform indices, each closest to the frame written there (the TFDS record of the video
    file's bytes gives the same pixels: tests/test_tfds.py)."""
    from data_pipelines import images, layouts, sources
    from data_pipelines.miniature import photos, write_miniature
    from data_pipelines.miniature.writer import VIDEO_FRAMES, VIDEO_SIZE

    root = str(tmp_path / "mini")
    manifest = write_miniature(root, seed=0)
    for name in ("msvd_qa", "msrvtt_qa", "ivqa"):
        record = sources.load_records(layouts.entry(name, "eval", root))[0]
        media = manifest["datasets"][name]["media"][os.path.relpath(record["video"], root)]
        photo = next(p for p in photos.PHOTOS if p.file == media["source"])
        written = photos.pan_frames(photo, VIDEO_FRAMES, *VIDEO_SIZE).astype(int)
        frames = images.load_clip_frames(record["video"], 4)
        indices = images.uniform_frame_indices(VIDEO_FRAMES, 4)
        for frame, index in zip(frames, indices):
            errors = [abs(np.asarray(frame, int) - w).mean() for w in written]
            assert int(np.argmin(errors)) == index, (name, errors)


def test_unreadable_video_is_a_bad_image_naming_the_file(tmp_path):
    from data_pipelines import images

    path = tmp_path / "broken.mp4"
    path.write_bytes(b"\x00\x00\x00\x18ftypmp42 truncated")
    with pytest.raises(images.BadImageError, match="broken.mp4"):
        images.load_clip_frames(str(path), 4)
    with pytest.raises(images.BadImageError, match="no such file"):
        images.load_clip_frames(str(tmp_path / "missing.webm"), 4)


def test_check_counts_the_miniature_faults_and_judges_them_by_the_bound(tmp_path):
    from data_pipelines import check
    from data_pipelines.miniature import CORRUPTED, counts, write_miniature
    from ib_jax import configs_util

    for corrupt in (False, True):
        root = str(tmp_path / f"mini_{corrupt}")
        manifest = write_miniature(root, seed=0, corrupt=corrupt)
        data = configs_util.load_config(f"configs/rehearsal.py:root={root}").data
        rows = check.check_config(data, sample=-1)
        assert len(rows) == 26
        weights = [r.weight for r in rows if r.split == "train"]
        assert len(weights) == 13 and abs(sum(weights) - 1.0) < 1e-9
        for row in rows:
            split = "train" if row.split == "train" else "eval"
            unreadable, malformed = counts.expected_faults(manifest, row.name, split)
            assert (row.unreadable, row.malformed, row.missing) == (unreadable, malformed, 0)
            assert row.examples == counts.expected_records(manifest, row.name, split)
            faulty = (row.name in CORRUPTED or row.name == "vqav2_qg") and (unreadable or malformed)
            assert row.status == ("STOP" if faulty else "ok"), row
        assert any(r.status == "STOP" for r in rows) == corrupt
    # A missing file: counted per file and named; a missing annotation file stops.
    os.remove(os.path.join(root, "gqa", "testdev_balanced_questions.json"))
    image = sources.load_records(data.eval_datasets[3])[0]["image"]  # vsr
    os.remove(image)
    rows = {r.name: r for r in check.check_config(data, sample=0)}
    assert rows["gqa"].status == "STOP" and "testdev_balanced_questions.json" in rows["gqa"].error
    assert rows["vsr"].missing == 1 and f"missing file {image}" in rows["vsr"].messages
    assert "vsr" in check.format_table(list(rows.values()))
