"""A small "own data" set as a user would bring it: a folder of images and CSV files.

    python -m data_pipelines.user_demo --out=my_data [--num_train=400] [--num_eval=60]

Writes coloured shapes (data_pipelines/demo_data.py's renderer: one shape, one of 4 colours and
3 shapes, 1-4 copies) as `OUT/images/*.png` and two questions per image ("What color is the
shape?", "What shape is shown?") in `OUT/train.csv` and `OUT/eval.csv` (columns image, question,
answer; held-out images for eval). The same rows in the other layouts the user format reads:
`OUT/train_imagefolder/` (Hugging Face imagefolder: the images beside metadata.jsonl with
file_name, question, answer) and `OUT/eval.parquet` (images embedded as Hugging Face Image
structs {"bytes", "path"}). Chance: 1/4 on colours, 1/3 on shapes. Deterministic in `--seed`.
"""

from __future__ import annotations

import csv
import json
import os
import shutil

import numpy as np
from absl import app, flags

from data_pipelines import demo_data

QUESTIONS = (("What color is the shape?", "color"), ("What shape is shown?", "shape"))


def _scenes(folder: str, prefix: str, count: int, rng: np.random.Generator) -> list[dict]:
    """Renders `count` scenes into `folder`; returns their rows (image, question, answer)."""
    rows = []
    for i in range(count):
        shape = demo_data.SHAPES[int(rng.integers(len(demo_data.SHAPES)))]
        color = list(demo_data.COLORS)[int(rng.integers(len(demo_data.COLORS)))]
        name = f"{prefix}_{i:04d}.png"
        demo_data.render_scene(shape, color, int(rng.integers(1, 5)), rng).save(
            os.path.join(folder, name)
        )
        answers = {"color": color, "shape": shape}
        rows += [
            {"image": f"images/{name}", "question": q, "answer": answers[kind]}
            for q, kind in QUESTIONS
        ]
    return rows


def _write_csv(path: str, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "question", "answer"])
        writer.writeheader()
        writer.writerows(rows)


def write(out: str, num_train: int = 400, num_eval: int = 60, seed: int = 0) -> dict[str, str]:
    """Writes the set under `out`; returns {name: path} of what it wrote."""
    import pyarrow as pa  # local: only the Parquet copy needs it
    import pyarrow.parquet as pq

    images = os.path.join(out, "images")
    os.makedirs(images, exist_ok=True)
    train = _scenes(images, "train", num_train, np.random.default_rng([seed, 0]))
    held_out = _scenes(images, "eval", num_eval, np.random.default_rng([seed, 1]))
    paths = {"images": images, "train": os.path.join(out, "train.csv")}
    paths["eval"] = os.path.join(out, "eval.csv")
    _write_csv(paths["train"], train)
    _write_csv(paths["eval"], held_out)
    # The imagefolder layout: images beside metadata.jsonl, file_name relative to the folder.
    folder = paths["train_imagefolder"] = os.path.join(out, "train_imagefolder")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "metadata.jsonl"), "w") as f:
        for row in train:
            name = os.path.basename(row["image"])
            shutil.copy(os.path.join(out, row["image"]), os.path.join(folder, name))
            metadata = {"file_name": name, "question": row["question"], "answer": row["answer"]}
            f.write(json.dumps(metadata) + "\n")
    # Parquet with the images embedded as Hugging Face Image structs.
    structs = []
    for row in held_out:
        with open(os.path.join(out, row["image"]), "rb") as f:
            data = f.read()
        image = {"bytes": data, "path": os.path.basename(row["image"])}
        structs.append({"image": image, "question": row["question"], "answer": row["answer"]})
    paths["eval_parquet"] = os.path.join(out, "eval.parquet")
    pq.write_table(pa.Table.from_pylist(structs), paths["eval_parquet"])
    return paths


def main(argv: list[str]) -> None:
    """Writes the set and prints where."""
    del argv
    paths = write(FLAGS.out, FLAGS.num_train, FLAGS.num_eval, FLAGS.seed)
    print(f"wrote {FLAGS.num_train} + {FLAGS.num_eval} images and their questions: {paths}")


if __name__ == "__main__":
    flags.DEFINE_string("out", None, "folder to write")
    flags.DEFINE_integer("num_train", 400, "training images (2 questions each)")
    flags.DEFINE_integer("num_eval", 60, "held-out images (2 questions each)")
    flags.DEFINE_integer("seed", 0, "random seed")
    flags.mark_flag_as_required("out")
    FLAGS = flags.FLAGS
    app.run(main)
