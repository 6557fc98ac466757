"""Prints decoded training examples as JSON lines, then the realized mixture proportions.

  python -m data_pipelines.inspect --config=configs/data_demo.py --num_examples=20

Each line: dataset, filled instruction, target, image (pixel) shape, token counts. The last line
compares the realized fraction of each dataset among the examples printed with its target weight.
"""

from __future__ import annotations

import collections
import json
import logging

from absl import app, flags
from ml_collections import config_flags

from data_pipelines import demo_data, pipeline


def inspect_examples(
    data_config, num_examples: int, process_index: int = 0, process_count: int = 1
):
    """Yields one JSON-able dict per good example, then a final {"mixture": ...} summary."""
    stream, weights = pipeline.build_train_examples(
        data_config, process_index=process_index, process_count=process_count, keep_text=True
    )
    counts, bad = collections.Counter(), 0
    iterator = iter(stream)
    while sum(counts.values()) < num_examples:
        example = next(iterator)
        if pipeline.BAD_KEY in example:
            bad += 1
            yield {"bad_example": example[pipeline.BAD_KEY]}
            continue
        counts[example[pipeline.DATASET_KEY]] += 1
        yield {
            "dataset": example[pipeline.DATASET_KEY],
            "instruction": example["_instruction"],
            "target": example["_target"],
            "image_shape": list(example["pixel_values"].shape),
            "qformer_tokens": int(example["qformer_attention_mask"].sum()),
            "lm_tokens": int(example["attention_mask"].sum()),
            "target_tokens": int((example["labels"] != -100).sum()),
        }
    total = sum(counts.values())
    yield {
        "mixture": {
            name: {"realized": round(counts[name] / total, 4), "target": round(w, 4)}
            for name, w in weights.items()
        },
        "examples": total,
        "bad_examples": bad,
    }


def _define_flags() -> None:
    """CLI flags, defined only when run as a program (importing two CLIs must not clash)."""
    global _CONFIG, _NUM, _PROCESS_INDEX, _PROCESS_COUNT
    _CONFIG = config_flags.DEFINE_config_file(
        "config", None, "data config file (configs/data_*.py)"
    )
    _NUM = flags.DEFINE_integer("num_examples", 10, "how many examples to print")
    _PROCESS_INDEX = flags.DEFINE_integer("process_index", 0, "which host shard to read")
    _PROCESS_COUNT = flags.DEFINE_integer("process_count", 1, "number of host shards")


def main(argv) -> None:
    del argv
    logging.basicConfig(level=logging.WARNING)
    config = _CONFIG.value
    if config is None:
        raise app.UsageError("--config is required, e.g. --config=configs/data_demo.py")
    demo_data.ensure_from_config(config)
    for line in inspect_examples(config, _NUM.value, _PROCESS_INDEX.value, _PROCESS_COUNT.value):
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    _define_flags()
    app.run(main)
