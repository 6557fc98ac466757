"""The evaluation job: `python -m ib_jax.evaluate --config=configs/... --workdir=DIR [--checkpoint=...] [--watch]`.

One-shot: evaluates one checkpoint, either
  --checkpoint=STEP      a training checkpoint DIR/checkpoints/STEP (Orbax, item "params"),
  --checkpoint=PATH      a directory written by `ib_jax.convert` or an HF InstructBLIP directory,
  (none)                 the latest training checkpoint in DIR.
Watch (--watch): polls DIR/checkpoints and evaluates every new step exactly once; finished steps
are recorded in DIR/eval/done.json (so a restarted job skips them); stops once the training job
has written DIR/TRAINING_DONE (or a step >= config.train.num_steps is evaluated), or after
--watch_timeout seconds without a new checkpoint.

Outputs under DIR/eval/: metrics.jsonl (one line per dataset and checkpoint), TensorBoard events
(`eval/<dataset>/<metric>`), predictions/<dataset>/<tag>.jsonl (one line per example).
Datasets and settings come from `config.eval`: `datasets` (names in config.data.eval_datasets),
`batch_size`, `split` (default "eval"), `overrides` {dataset: {EvalSettings field: value}}.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import ml_collections

logger = logging.getLogger(__name__)

FINAL_MARKER = "TRAINING_DONE"  # written by the training job into the workdir when it ends


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------


def checkpoint_steps(workdir: str) -> list[int]:
    """Finalized training checkpoint steps (Orbax renames a step directory into place when complete)."""
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        return []
    return sorted(
        int(name)
        for name in os.listdir(directory)
        if name.isdigit() and os.path.isdir(os.path.join(directory, name))
    )


def restore_params(workdir: str, step: int) -> Any:
    """Full parameter tree of a training checkpoint (delegates to ib_jax.checkpoint)."""
    from ib_jax import checkpoint

    _, params, _ = checkpoint.restore_params(workdir, step)
    return params


def load_model(config: ml_collections.ConfigDict, workdir: str, checkpoint: str | int | None):
    """(model, params, tag) for a step of the run, or a converted / HF directory."""
    import ib_jax
    from ib_jax.models.configs import from_config_dict
    from ib_jax.models.instructblip import InstructBlip

    if checkpoint not in (None, "") and not str(checkpoint).isdigit():
        model, params = ib_jax.load_pretrained(str(checkpoint))
        return model, params, os.path.basename(os.path.normpath(str(checkpoint)))
    if checkpoint in (None, ""):
        steps = checkpoint_steps(workdir)
        if not steps:
            raise FileNotFoundError(
                f"no training checkpoints under {workdir}/checkpoints and no --checkpoint given"
            )
        checkpoint = steps[-1]
    step = int(checkpoint)
    model = InstructBlip(from_config_dict(config.model))
    return model, restore_params(workdir, step), f"step_{step}"


# ---------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------


class Outputs:
    """metrics.jsonl + TensorBoard + per-example predictions under WORKDIR/eval."""

    def __init__(self, workdir: str):
        self.root = os.path.join(workdir, "eval")
        os.makedirs(self.root, exist_ok=True)
        self._writer = None

    @property
    def writer(self):
        if self._writer is None:
            from tensorboardX import SummaryWriter

            self._writer = SummaryWriter(os.path.join(self.root, "tensorboard"))
        return self._writer

    def write(
        self,
        dataset: str,
        tag: str,
        step: int | None,
        metrics: dict[str, float],
        predictions: list[dict[str, Any]],
    ) -> None:
        path = os.path.join(self.root, "predictions", dataset, f"{tag}.jsonl")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            for record in predictions:
                f.write(json.dumps(record) + "\n")
        line = {"checkpoint": tag, "step": step, "dataset": dataset, "time": time.time(), **metrics}
        with open(os.path.join(self.root, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(line) + "\n")
        for name, value in metrics.items():
            self.writer.add_scalar(f"eval/{dataset}/{name}", float(value), global_step=step or 0)
        self.writer.flush()

    def done_steps(self) -> set[int]:
        path = os.path.join(self.root, "done.json")
        if not os.path.exists(path):
            return set()
        with open(path) as f:
            return set(json.load(f)["steps"])

    def mark_done(self, step: int) -> None:
        steps = sorted(self.done_steps() | {step})
        tmp = os.path.join(self.root, "done.json.tmp")
        with open(tmp, "w") as f:
            json.dump({"steps": steps}, f)
        os.replace(
            tmp, os.path.join(self.root, "done.json")
        )  # atomic: a crash never leaves half a file

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


# ---------------------------------------------------------------------------------------------
# Evaluation of one checkpoint
# ---------------------------------------------------------------------------------------------


def _eval_settings(config: ml_collections.ConfigDict, dataset: str):
    from data_pipelines import eval_pipeline, sources
    from ib_jax.eval import evaluators

    entry = eval_pipeline.find_eval_entry(config.data, dataset, config.eval.get("split", "eval"))
    overrides = config.eval.get("overrides", {}) or {}
    overrides = dict(overrides.get(dataset, {}) or {}) if hasattr(overrides, "get") else {}
    return evaluators.settings_for(
        dataset, overrides, registry_name=sources.resolve_spec(entry).name
    )


def evaluate_checkpoint(
    config: ml_collections.ConfigDict, model, params, tag: str, step: int | None, outputs: Outputs
) -> dict[str, dict[str, float]]:
    """Every dataset of config.eval on one checkpoint; writes outputs, returns {dataset: metrics}."""
    from tqdm import tqdm

    from data_pipelines import eval_pipeline, preprocess, sources
    from data_pipelines.text import LMTokenizer
    from ib_jax.eval import evaluators

    data_config = ml_collections.ConfigDict(config.data.to_dict())
    data_config.eval_batch_size = int(
        config.eval.get("batch_size", data_config.get("eval_batch_size", 8))
    )
    tokenizer = LMTokenizer(str(data_config.lm_spm))
    split = config.eval.get("split", "eval")
    results = {}
    for dataset in config.eval.datasets:
        settings = _eval_settings(config, dataset)
        evaluator = evaluators.make_evaluator(settings, tokenizer)
        entry = eval_pipeline.find_eval_entry(data_config, dataset, split)
        max_bad_fraction = preprocess.setting(data_config, "max_bad_fraction")
        total = len(sources.load_records(entry, float(max_bad_fraction)))
        with tqdm(total=total, desc=f"{tag} {dataset}", unit="ex", leave=False) as bar:
            batches = eval_pipeline.build_eval_dataset(data_config, dataset, split)
            result = evaluator.run(model, params, batches, progress=bar.update)
        outputs.write(dataset, tag, step, result.metrics, result.predictions)
        logger.info("%s %s: %s", tag, dataset, result.metrics)
        results[dataset] = result.metrics
    return results


def _training_finished(
    config: ml_collections.ConfigDict, workdir: str, evaluated: set[int]
) -> bool:
    if os.path.exists(os.path.join(workdir, FINAL_MARKER)):
        return True
    num_steps = config.get("train", {}).get("num_steps") if hasattr(config, "get") else None
    return bool(num_steps) and any(step >= int(num_steps) for step in evaluated)


def watch(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    poll_seconds: float = 30.0,
    timeout_seconds: float = 3600.0,
    outputs: Outputs | None = None,
) -> list[int]:
    """Evaluate every new checkpoint once until training is finished or `timeout_seconds` pass
    without a new checkpoint. Returns the steps evaluated by this call."""
    outputs = outputs or Outputs(workdir)
    evaluated_now: list[int] = []
    last_progress = time.monotonic()
    while True:
        done = outputs.done_steps()
        pending = [s for s in checkpoint_steps(workdir) if s not in done]
        for step in pending:
            model, params, tag = load_model(config, workdir, step)
            evaluate_checkpoint(config, model, params, tag, step, outputs)
            outputs.mark_done(step)
            evaluated_now.append(step)
            last_progress = time.monotonic()
        # The marker is checked after a final scan, so the last checkpoint is never missed.
        if _training_finished(config, workdir, outputs.done_steps()):
            if not [s for s in checkpoint_steps(workdir) if s not in outputs.done_steps()]:
                return evaluated_now
            continue
        if time.monotonic() - last_progress > timeout_seconds:
            logger.warning("no new checkpoint for %.0f s; stopping", timeout_seconds)
            return evaluated_now
        time.sleep(poll_seconds)


def run(
    config: ml_collections.ConfigDict,
    workdir: str,
    checkpoint: str | None = None,
    *,
    watch_mode: bool = False,
    poll_seconds: float = 30.0,
    timeout_seconds: float = 3600.0,
) -> Any:
    outputs = Outputs(workdir)
    try:
        if watch_mode:
            return watch(
                config,
                workdir,
                poll_seconds=poll_seconds,
                timeout_seconds=timeout_seconds,
                outputs=outputs,
            )
        model, params, tag = load_model(config, workdir, checkpoint)
        step = int(tag[len("step_") :]) if tag.startswith("step_") else None
        return evaluate_checkpoint(config, model, params, tag, step, outputs)
    finally:
        outputs.close()


def main(argv: list[str]) -> None:
    from absl import flags

    del argv
    FLAGS = flags.FLAGS
    logging.basicConfig(level=logging.INFO)
    run(
        FLAGS.config,
        FLAGS.workdir,
        FLAGS.checkpoint or None,
        watch_mode=FLAGS.watch,
        poll_seconds=FLAGS.poll_seconds,
        timeout_seconds=FLAGS.watch_timeout,
    )


def _define_flags() -> None:
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file(
        "config", None, "configs/*.py file (get_config(arg))", lock_config=False
    )
    flags.DEFINE_string(
        "workdir", None, "run directory (checkpoints/ in, eval/ out)", required=True
    )
    flags.DEFINE_string(
        "checkpoint", "", "training step, or a converted/HF directory; default: latest step"
    )
    flags.DEFINE_bool("watch", False, "evaluate every new checkpoint until training ends")
    flags.DEFINE_float(
        "poll_seconds", 30.0, "watch: seconds between scans of the checkpoint directory"
    )
    flags.DEFINE_float(
        "watch_timeout", 3600.0, "watch: stop after this long without a new checkpoint"
    )


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(main)
