"""`python -m ib_jax.predict` beside the eval job, end to end, on the benchmark configuration.

    python -m benchmarks.predict_throughput [--rows=64] [--batch=8] [--threads=1] [--repeats=3]

A converted checkpoint directory of the benchmark model with tokenizer files, `rows` rendered
scenes in a CSV, the QA settings (5 beams, 1-10 new tokens, length penalty -1). The model is
loaded once (`ib_jax.predict.job.load`); then, alternating, `ib_jax.predict.job.run` on the rows
and the eval job's per-dataset pass on the same rows as a user entry (its evaluator over
`build_eval_dataset` batches, as ib_jax/eval/job.py runs it). Each reports its steady-state
examples/s: the rows after the first batch over the time since that batch ended. The eval job's
own step against the reference's `generate` is benchmarks/eval_throughput.py
(benchmarks/EVAL_RESULTS.md).
"""

from __future__ import annotations

import csv
import os
import shutil
import statistics
import tempfile
import time

import flax
import jax
import numpy as np
from absl import app, flags

from benchmarks import run as bench
from configs import evals
from data_pipelines import demo_data, eval_pipeline, text, user_data
from ib_jax.contract.config import Evaluation
from ib_jax.contract.text import text_format
from ib_jax.convert import api
from ib_jax.eval import evaluators
from ib_jax.models.instructblip import InstructBlip, init_params
from ib_jax.predict import Decoding
from ib_jax.predict import job as predict_job

QA = dict(num_beams=5, min_new_tokens=1, max_new_tokens=10, length_penalty=-1.0)


def checkpoint(directory: str) -> str:
    """The benchmark model (flax's initialisation) as `ib_jax.convert` writes it, with the demo
    tokenizers where a Hugging Face directory keeps them."""
    config = bench.model_config(bench.BenchConfig())
    size = config.vision.image_size
    batch = {"pixel_values": np.zeros((1, size, size, 3), np.float32)}
    for key in ("input_ids", "attention_mask", "qformer_input_ids", "qformer_attention_mask"):
        batch[key] = np.ones((1, 4), np.int32)
    batch["labels"] = np.ones((1, 4), np.int32)
    params = flax.linen.meta.unbox(init_params(InstructBlip(config), jax.random.key(0), batch))
    api.save_converted(directory, config, jax.device_get(params))
    os.makedirs(os.path.join(directory, "qformer_tokenizer"))
    shutil.copy(demo_data.DEMO_VOCAB, os.path.join(directory, "qformer_tokenizer", "vocab.txt"))
    shutil.copy(demo_data.DEMO_SPM, os.path.join(directory, "spiece.model"))
    return directory


def rows_file(folder: str, count: int) -> str:
    """`count` rendered scenes and a question each, as a CSV beside them."""
    rng = np.random.default_rng(0)
    path = os.path.join(folder, f"rows_{count}.csv")
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "question", "answer"])
        for i in range(count):
            name = f"scene_{i:04d}.png"
            if not os.path.exists(os.path.join(folder, name)):
                demo_data.render_scene("circle", "red", 1 + i % 4, rng).save(
                    os.path.join(folder, name)
                )
            writer.writerow([name, "what color is the shape?", "red"])
    return path


class Clock:
    """Times batches: steady-state examples/s after the first batch (which compiles)."""

    def __init__(self) -> None:
        self.marks: list[tuple[float, int]] = []

    def __call__(self, rows: int) -> None:
        self.marks.append((time.perf_counter(), rows))

    def examples_per_s(self) -> float:
        (start, _), *rest = self.marks
        return sum(n for _, n in rest) / (rest[-1][0] - start)


def eval_job_pass(program, source, rows: str, batch: int, clock: Clock) -> None:
    """What the eval job runs per dataset (ib_jax/eval/job.py): the user entry's batches through
    its evaluator, with the declared evaluation's prompt and decoding."""
    data = predict_job.data_config(
        user_data.entry("bench", rows, "eval"), program.model.config, source, batch
    )
    settings = Evaluation(name="bench", **{**evals.USER_TASKS["vqa"], **QA})
    tokenizer = text.LMTokenizer(str(data["lm_spm"]), text_format(data["lm_type"]))
    evaluator = evaluators.make_evaluator(settings, tokenizer)
    batches = eval_pipeline.build_eval_dataset(data, "bench", "eval", prompt=settings.prompt)
    evaluator.run(program, batches, clock)


def main(argv: list[str]) -> None:
    """Both jobs on the same rows with one loaded program; prints steady-state examples/s."""
    del argv
    bench.pin_threads(FLAGS.threads)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = checkpoint(os.path.join(tmp, "ckpt"))
        rows = rows_file(tmp, FLAGS.rows)
        loaded = predict_job.load(ckpt)
        results = {}
        for _ in range(FLAGS.repeats):  # alternating, so both see the same machine load
            clock = Clock()
            out = os.path.join(tmp, "out.jsonl")
            predict_job.run(
                ckpt,
                rows,
                out,
                decoding=Decoding(**QA),
                batch_size=FLAGS.batch,
                progress=False,
                loaded=loaded,
                on_batch=clock,
            )
            results.setdefault("predict", []).append(clock.examples_per_s())
            clock = Clock()
            eval_job_pass(loaded[1], loaded[0], rows, FLAGS.batch, clock)
            results.setdefault("eval", []).append(clock.examples_per_s())
    for job, values in results.items():
        print(f"{job}: median {statistics.median(values):.2f} examples/s over {values}")


if __name__ == "__main__":
    flags.DEFINE_integer("rows", 64, "rows of the smaller run (the larger has twice as many)")
    flags.DEFINE_integer("batch", 8, "global batch of both jobs")
    flags.DEFINE_integer("threads", 1, "cores (benchmarks.run.pin_threads)")
    flags.DEFINE_integer("repeats", 3, "passes per job (alternating)")
    FLAGS = flags.FLAGS
    app.run(main)
