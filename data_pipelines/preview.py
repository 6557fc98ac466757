"""Prints decoded training examples as JSON lines, then the realized mixture proportions.

  python -m data_pipelines.preview --config=configs/demo.py --num_examples=20 [--out=DIR]

`--config` is the run config training takes (its `data` section is read; a data-only config such
as configs/data_heldin.py works too), with the same `--config.data.<key>=...` overrides. Each line:
dataset, filled instruction, target, image (pixel) shape, token counts. The last line compares the
realized fraction of each dataset among the examples printed with its target weight.

`--out=DIR` writes the lines to DIR/preview.jsonl instead, and DIR/preview.html: a page showing
each example as the model gets it (its image, or a clip's frames, after resizing and
augmentation), its filled instruction and its target (data_pipelines/pages.py; self-contained,
opens offline).
"""

from __future__ import annotations

import collections
import json
import os
from collections.abc import Iterator, Mapping
from typing import Any

from absl import app, flags

from data_pipelines import pages, preprocess, train_pipeline
from ib_jax.contract import cli
from ib_jax.contract.batch import IGNORE_INDEX


def preview_examples(
    data_config: Mapping[str, Any],
    num_examples: int,
    process_index: int = 0,
    process_count: int = 1,
    pictures: bool = False,
) -> Iterator[dict[str, Any]]:
    """Yields one JSON-able dict per good example (and one per bad example met on the way),
    then a final {"mixture": ..., "examples", "bad_examples"} summary. `pictures`: each good
    example also has "pictures", its pixel_values as data: URIs (pages.pixel_pictures)."""
    stream, weights = train_pipeline.build_train_examples(
        data_config, process_index=process_index, process_count=process_count, keep_text=True
    )
    counts, bad = collections.Counter(), 0
    iterator = iter(stream)
    while sum(counts.values()) < num_examples:
        example = next(iterator)
        if preprocess.BAD_KEY in example:
            bad += 1
            yield {"bad_example": example[preprocess.BAD_KEY]}
            continue
        counts[example[preprocess.DATASET_KEY]] += 1
        line = {
            "dataset": example[preprocess.DATASET_KEY],
            "instruction": example["_instruction"],
            "target": example["_target"],
            "image_shape": list(example["pixel_values"].shape),
            "qformer_tokens": int(example["qformer_attention_mask"].sum()),
            "lm_tokens": int(example["attention_mask"].sum()),
            "target_tokens": int((example["labels"] != IGNORE_INDEX).sum()),
        }
        if pictures:
            line["pictures"] = pages.pixel_pictures(example["pixel_values"])
        yield line
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
    global _CONFIG, _OUT, _NUM, _PROCESS_INDEX, _PROCESS_COUNT
    _CONFIG = cli.define_config_flag()  # a run config (its `data` is read) or a data config
    _OUT = flags.DEFINE_string(
        "out", None, "write DIR/preview.jsonl and the page DIR/preview.html (default: stdout)"
    )
    _NUM = flags.DEFINE_integer("num_examples", 10, "how many examples to print")
    _PROCESS_INDEX = flags.DEFINE_integer("process_index", 0, "which host shard to read")
    _PROCESS_COUNT = flags.DEFINE_integer("process_count", 1, "number of host shards")
    flags.mark_flags_as_required(["config"])


def write_page(path: str, title: str, lines: list[dict[str, Any]]) -> str:
    """The preview page of `lines` (preview_examples with pictures) at `path`."""
    cards, summary = [], [f"{sum('dataset' in line for line in lines)} training examples"]
    for line in lines:
        if "dataset" in line:
            texts = [("instruction", line["instruction"]), ("target", line["target"])]
            tokens = f"Q-Former {line['qformer_tokens']}, LM {line['lm_tokens']}, target "
            texts.append(("tokens", tokens + str(line["target_tokens"])))
            cards.append(pages.Card(line["dataset"], line["pictures"], texts))
        elif "bad_example" in line:
            cards.append(pages.Card("bad example (skipped)", [], [], note=line["bad_example"]))
        else:
            mixture = ", ".join(
                f"{name} {m['realized']:.2f} (target {m['target']:.2f})"
                for name, m in line["mixture"].items()
            )
            summary += [f"bad examples met: {line['bad_examples']}", f"mixture: {mixture}"]
    return pages.write(path, title, summary, cards)


def main(argv: list[str]) -> None:
    """Prints (or writes to --out) the preview of --config's training data."""
    del argv
    data_config = preprocess.data_section(_CONFIG.value)
    lines = preview_examples(
        data_config,
        _NUM.value,
        _PROCESS_INDEX.value,
        _PROCESS_COUNT.value,
        pictures=bool(_OUT.value),
    )
    if not _OUT.value:
        for line in lines:
            print(json.dumps(line), flush=True)
        return
    os.makedirs(_OUT.value, exist_ok=True)
    kept = []
    with open(os.path.join(_OUT.value, "preview.jsonl"), "w") as out:
        for line in lines:
            kept.append(line)
            print(json.dumps({k: v for k, v in line.items() if k != "pictures"}), file=out)
    title = f"Training examples of {cli.config_path(_CONFIG)}"
    path = write_page(os.path.join(_OUT.value, "preview.html"), title, kept)
    examples = sum("dataset" in line for line in kept)
    print(f"wrote {examples} examples to {_OUT.value}/preview.jsonl and the page {path}")


if __name__ == "__main__":
    _define_flags()
    app.run(cli.guarded("preview", main))
