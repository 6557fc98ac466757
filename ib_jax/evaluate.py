"""The evaluation job.

    python -m ib_jax.evaluate --config=configs/... --workdir=DIR [--checkpoint=...] [--watch]

One-shot: evaluates one checkpoint, either
  --checkpoint=STEP      a training checkpoint DIR/checkpoints/STEP (Orbax, item "params"),
  --checkpoint=PATH      a directory written by `ib_jax.convert` or an HF InstructBLIP directory,
  (none)                 the latest training checkpoint in DIR.
Watch (--watch): polls DIR/checkpoints and evaluates every new step exactly once; finished steps
are recorded in DIR/eval/done.json (so a restarted job skips them); stops once the training job
has written DIR/TRAINING_DONE (or a step >= config.train.num_steps is evaluated), or after
--watch_timeout seconds without a new checkpoint.

A dataset that cannot be evaluated (missing files, too many unreadable images, bad settings) is
logged with its error and written to metrics.jsonl as {"dataset", "failed": true, "error"}; the
other datasets still run, and the job exits with status 1 naming the failed ones.
Outputs under DIR/eval/: metrics.jsonl (one line per dataset and checkpoint), TensorBoard events
(`eval/<dataset>/<metric>`), predictions/<dataset>/<tag>.jsonl (one line per example).
Datasets and settings come from `config.eval`: `datasets` (names in config.data.eval_datasets),
`batch_size`, `split` (default "eval"), `overrides` {dataset: {EvalSettings field: value}}.
Library logs go to DIR/logs/evaluate.log (see `ib_jax.cli`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import ml_collections

from ib_jax import checkpoint as checkpoint_lib

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------


def load_model(
    config: ml_collections.ConfigDict, workdir: str, checkpoint: str | int | None
) -> tuple[Any, Any, str]:
    """(model, params, tag) for a step of the run, or a converted / HF directory.

    `checkpoint`: a step number (its params from WORKDIR/checkpoints/STEP, the model from
    `config.model`), a directory (model and params from it), or None for the latest step. The tag
    names the outputs: `step_<N>` or the directory's base name.
    """
    import ib_jax
    from ib_jax.models.configs import from_config_dict
    from ib_jax.models.instructblip import InstructBlip

    if checkpoint not in (None, "") and not str(checkpoint).isdigit():
        model, params = ib_jax.load_pretrained(str(checkpoint))
        return model, params, os.path.basename(os.path.normpath(str(checkpoint)))
    if checkpoint in (None, ""):
        steps = checkpoint_lib.finalized_steps(workdir)
        if not steps:
            raise FileNotFoundError(
                f"no training checkpoints under {workdir}/checkpoints and no --checkpoint given"
            )
        checkpoint = steps[-1]
    step = int(checkpoint)
    model = InstructBlip(from_config_dict(config.model))
    _, params, _ = checkpoint_lib.restore_params(workdir, step)
    return model, params, f"step_{step}"


# ---------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------


class Outputs:
    """metrics.jsonl + TensorBoard + per-example predictions under WORKDIR/eval."""

    def __init__(self, workdir: str):
        self.root = os.path.join(workdir, "eval")
        os.makedirs(self.root, exist_ok=True)
        self._writer = None
        self.failed: list[tuple[str, str, str]] = []  # (checkpoint tag, dataset, error)

    @property
    def writer(self) -> Any:
        """The TensorBoard writer, made on first use."""
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
        """Record one dataset's results for checkpoint `tag`: predictions file, metrics line,
        TensorBoard scalars (at `step`, 0 for a checkpoint outside the run)."""
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

    def write_failure(self, dataset: str, tag: str, step: int | None, error: str) -> None:
        """Record that `dataset` could not be evaluated on checkpoint `tag`: a metrics line with
        its error (no metric), and an entry in `failed` for the exit status."""
        line = {"checkpoint": tag, "step": step, "dataset": dataset, "time": time.time()}
        line.update(failed=True, error=error)
        with open(os.path.join(self.root, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(line) + "\n")
        self.failed.append((tag, dataset, error))

    def done_steps(self) -> set[int]:
        """Steps a watch job has finished (all datasets written), from eval/done.json."""
        path = os.path.join(self.root, "done.json")
        if not os.path.exists(path):
            return set()
        with open(path) as f:
            return set(json.load(f)["steps"])

    def mark_done(self, step: int) -> None:
        """Add `step` to eval/done.json, so a restarted watch job skips it."""
        steps = sorted(self.done_steps() | {step})
        tmp = os.path.join(self.root, "done.json.tmp")
        with open(tmp, "w") as f:
            json.dump({"steps": steps}, f)
        # Written aside and renamed into place: a crash never leaves half a file.
        os.replace(tmp, os.path.join(self.root, "done.json"))

    def close(self) -> None:
        """Close the TensorBoard writer if one was made."""
        if self._writer is not None:
            self._writer.close()


# ---------------------------------------------------------------------------------------------
# Evaluation of one checkpoint
# ---------------------------------------------------------------------------------------------


def _eval_settings(config: ml_collections.ConfigDict, dataset: str) -> Any:
    """The dataset's EvalSettings: its registry entry's defaults, then config.eval.overrides."""
    from data_pipelines import eval_pipeline, sources
    from ib_jax.eval import evaluators

    entry = eval_pipeline.find_eval_entry(config.data, dataset, config.eval.get("split", "eval"))
    overrides = config.eval.get("overrides", {}) or {}
    overrides = dict(overrides.get(dataset, {}) or {}) if hasattr(overrides, "get") else {}
    return evaluators.settings_for(
        dataset, overrides, registry_name=sources.resolve_spec(entry).name
    )


def evaluate_checkpoint(
    config: ml_collections.ConfigDict,
    model: Any,
    params: Any,
    tag: str,
    step: int | None,
    outputs: Outputs,
) -> dict[str, dict[str, float]]:
    """Every dataset of config.eval on one checkpoint; writes outputs, returns {dataset: metrics}."""
    from tqdm import tqdm

    from data_pipelines import eval_pipeline, preprocess, sources, text
    from ib_jax.eval import evaluators

    # A copy: the run config is locked, and the eval batch size is set on the data config.
    data_config = ml_collections.ConfigDict(config.data.to_dict())
    data_config.eval_batch_size = int(
        config.eval.get("batch_size", data_config.get("eval_batch_size", 8))
    )
    # The evaluated model's LM family sets the text conventions (a converted checkpoint may be of
    # another family than config.model), and its token ids must be the tokenizer's.
    data_config.lm_type = model.config.lm_type
    tokenizer = text.LMTokenizer(str(data_config.lm_spm), text.text_format(data_config.lm_type))
    tokenizer.check_model(model.config.text)
    split = config.eval.get("split", "eval")
    results = {}
    for dataset in config.eval.datasets:
        try:
            settings = _eval_settings(config, dataset)
            evaluator = evaluators.make_evaluator(settings, tokenizer)
            entry = eval_pipeline.find_eval_entry(data_config, dataset, split)
            max_bad_fraction = preprocess.setting(data_config, "max_bad_fraction")
            total = len(sources.load_records(entry, float(max_bad_fraction)))
            with tqdm(total=total, desc=f"{tag} {dataset}", unit="ex", leave=False) as bar:
                batches = eval_pipeline.build_eval_dataset(data_config, dataset, split)
                result = evaluator.run(model, params, batches, progress=bar.update)
        except Exception as error:  # one dataset's bad files or settings must not stop the rest
            logger.exception("%s %s: evaluation failed", tag, dataset)
            message = f"{type(error).__name__}: {error}"
            outputs.write_failure(dataset, tag, step, message)
            results[dataset] = {"error": message}
            continue
        outputs.write(dataset, tag, step, result.metrics, result.predictions)
        logger.info("%s %s: %s", tag, dataset, result.metrics)
        results[dataset] = result.metrics
    return results


def _training_finished(
    config: ml_collections.ConfigDict, workdir: str, evaluated: set[int]
) -> bool:
    """The training job wrote its marker, or a step >= config.train.num_steps was evaluated."""
    if checkpoint_lib.training_done(workdir):
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
        pending = [s for s in checkpoint_lib.finalized_steps(workdir) if s not in done]
        for step in pending:
            model, params, tag = load_model(config, workdir, step)
            evaluate_checkpoint(config, model, params, tag, step, outputs)
            outputs.mark_done(step)
            evaluated_now.append(step)
            last_progress = time.monotonic()
        # The marker is checked after a final scan, so the last checkpoint is never missed.
        if _training_finished(config, workdir, outputs.done_steps()):
            done = outputs.done_steps()
            if not [s for s in checkpoint_lib.finalized_steps(workdir) if s not in done]:
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
    outputs: Outputs | None = None,
) -> dict[str, dict[str, float]] | list[int]:
    """One-shot: {dataset: metrics} of `checkpoint` (see `load_model`); with `watch_mode`: the
    steps evaluated by `watch`. Outputs are written under WORKDIR/eval either way. A dataset
    that fails is reported (its metrics are {"error": ...}, `outputs.failed` lists it) and the
    others still run."""
    outputs = outputs or Outputs(workdir)
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
    """The command line (flags from `_define_flags`); results are logged per dataset."""
    from absl import flags

    from ib_jax import cli

    del argv
    FLAGS = flags.FLAGS
    cli.quiet_console()
    cli.log_to_file(FLAGS.workdir, "evaluate")
    outputs = Outputs(FLAGS.workdir)
    run(
        FLAGS.config,
        FLAGS.workdir,
        FLAGS.checkpoint or None,
        watch_mode=FLAGS.watch,
        poll_seconds=FLAGS.poll_seconds,
        timeout_seconds=FLAGS.watch_timeout,
        outputs=outputs,
    )
    if outputs.failed:  # exit status 1, naming each failed dataset and why
        raise SystemExit(
            "evaluation failed for: "
            + "; ".join(f"{dataset} ({tag}): {error}" for tag, dataset, error in outputs.failed)
        )


def _define_flags() -> None:
    """Flags of `python -m ib_jax.evaluate`; defined only when run as a program, because
    `ib_jax.train` imports this module after its own --config and --workdir are defined."""
    from absl import flags

    from ib_jax import cli

    cli.define_config_flag()
    cli.define_workdir_flag("run directory: checkpoints/ are read, eval/ and logs/ written")
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
    flags.adopt_module_key_flags(cli)


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(main)
