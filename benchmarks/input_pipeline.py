"""Input-pipeline throughput: examples/s at 224 px from JPEG files, with and without workers.

  python -m benchmarks.input_pipeline --num_images=256 --batches=20 --workers=0,2

Writes `num_images` 640x480 JPEGs (crops of skimage's real photographs, quality 90) and a
VQAv2-style (LAVIS) annotation file into a temporary directory, then times the real training
pipeline (`build_train_dataset`: decode, template, bicubic resize, CLIP normalize, WordPiece +
SentencePiece, batch) after a warm-up. Prints one JSON line per worker count.
"""

from __future__ import annotations

import json
import os
import tempfile
import time

import numpy as np
import skimage.data
from absl import app, flags
from PIL import Image
from tqdm import tqdm

from data_pipelines import demo_data, train_pipeline

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "camera")


def write_jpegs(root: str, num_images: int) -> str:
    """JPEG photos + a LAVIS VQAv2 annotation file; returns the annotation path."""
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    rng = np.random.default_rng(0)
    photos = [
        Image.fromarray(getattr(skimage.data, name)()).convert("RGB").resize((800, 600))
        for name in PHOTOS
    ]
    rows = []
    for i in tqdm(range(num_images), desc="writing JPEGs", leave=False):
        photo = photos[i % len(photos)]
        left, top = int(rng.integers(0, 160)), int(rng.integers(0, 120))
        name = f"{i:06d}.jpg"
        photo.crop((left, top, left + 640, top + 480)).save(
            os.path.join(root, "images", name), quality=90
        )
        rows.append(
            {
                "question_id": i,
                "question": "what is shown in the picture?",
                "answer": ["a photo"] * 10,
                "image": name,
            }
        )
    ann_path = os.path.join(root, "vqa.json")
    with open(ann_path, "w") as f:
        json.dump(rows, f)
    return ann_path


def measure(root: str, ann_path: str, workers: int, batch_size: int, batches: int) -> dict:
    """Examples/s of `build_train_dataset` over the files of `write_jpegs`, after a warm-up."""
    config = {
        "datasets": [
            {"name": "vqav2", "ann_path": ann_path, "image_root": os.path.join(root, "images")}
        ],
        "image_size": 224,
        "qformer_max_len": 64,
        "text_max_len": 128,
        "target_max_len": 16,
        "qformer_vocab": demo_data.DEMO_VOCAB,
        "lm_spm": demo_data.DEMO_SPM,
        "global_batch_size": batch_size,
        "seed": 0,
        "worker_count": workers,
        "max_bad_fraction": 0.0,
        "augment": False,
        "prefetch_batches": 2,
    }
    iterator = iter(train_pipeline.build_train_dataset(config, process_index=0, process_count=1))
    for _ in range(3):  # warm-up: worker start, tokenizer load, first buffers
        next(iterator)
    start = time.perf_counter()
    for _ in tqdm(range(batches), desc=f"workers={workers}", leave=False):
        next(iterator)
    seconds = time.perf_counter() - start
    iterator.close()
    return {
        "workers": workers,
        "image_size": 224,
        "batch_size": batch_size,
        "batches": batches,
        "examples_per_s": round(batches * batch_size / seconds, 1),
        "cpus": os.cpu_count(),
    }


def _define_flags() -> None:
    """CLI flags, defined only when run as a program (benchmarks.run imports this module)."""
    global _NUM_IMAGES, _BATCH_SIZE, _BATCHES, _WORKERS
    _NUM_IMAGES = flags.DEFINE_integer("num_images", 256, "JPEGs to write")
    _BATCH_SIZE = flags.DEFINE_integer("batch_size", 16, "examples per batch")
    _BATCHES = flags.DEFINE_integer("batches", 20, "batches timed after the warm-up")
    _WORKERS = flags.DEFINE_list("workers", ["0", "2"], "worker counts to measure")


def main(argv: list[str]) -> None:
    """Writes the JPEGs once, then prints one JSON line per worker count."""
    del argv
    with tempfile.TemporaryDirectory() as root:
        ann_path = write_jpegs(root, _NUM_IMAGES.value)
        for workers in (int(w) for w in _WORKERS.value):
            result = measure(root, ann_path, workers, _BATCH_SIZE.value, _BATCHES.value)
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    _define_flags()
    app.run(main)
