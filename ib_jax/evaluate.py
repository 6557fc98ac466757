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

The job runs on the trainer's mesh (ib_jax/eval/program.py: `config.eval.mesh` or `config.mesh`),
on every process of a multi-host job (`ib_jax.distributed`, as training): parameters are restored
straight into their shardings (ib_jax/eval/loading.py; the model is the one the checkpoint was
saved with, and an eval config whose model section disagrees is refused), each process reads its
shard of every eval set, and the predictions are gathered so that metrics are computed once and
the outputs written once, by process 0, in the dataset's order (ib_jax/eval/runner.py).

A dataset that cannot be evaluated (missing files, too many unreadable images or non-finite
outputs, a metric that cannot be computed, bad settings) is logged with its error and written to
metrics.jsonl as {"dataset", "failed": true, "error"}; the other datasets still run, and the job
exits with status 1 naming the failed ones.
Outputs under DIR/eval/: metrics.jsonl (one line per dataset and checkpoint), TensorBoard events
(`eval/<dataset>/<metric>`), predictions/<dataset>/<tag>.jsonl (one line per example).
Datasets and settings come from `config.eval`: `datasets` (names in config.data.eval_datasets),
`batch_size` (global), `split` (default "eval"), `overrides` {dataset: {EvalSettings field: value}},
`dtype` / `param_dtype` (default float32), `mesh` (optional: {shape, axis_rules}).
Library logs go to DIR/logs/evaluate.log (see `ib_jax.cli`).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import jax
import ml_collections
from etils import epath

from ib_jax import checkpoint as checkpoint_lib
from ib_jax.contract.text import text_format
from ib_jax.eval import hosts

logger = logging.getLogger(__name__)


def load_model(
    config: ml_collections.ConfigDict, workdir: str, checkpoint: str | int | None
) -> Any:
    """The `ib_jax.eval.loading.Loaded` program for a step of the run (None: the latest) or a
    converted / HF directory, its parameters on the eval mesh."""
    from ib_jax.eval import loading

    return loading.load(config, workdir, checkpoint)


# ---------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------


class Outputs:
    """metrics.jsonl + TensorBoard + per-example predictions under WORKDIR/eval, written by
    process 0 only (every process keeps the list of failures, for the exit status). Paths go
    through `etils.epath`, so a bucket workdir (gs://...) is written where it is."""

    def __init__(self, workdir: str):
        self.root = epath.Path(workdir) / "eval"
        self.writes = jax.process_index() == 0
        if self.writes:
            self.root.mkdir(parents=True, exist_ok=True)
        self._writer = None
        self.failed: list[tuple[str, str, str]] = []  # (checkpoint tag, dataset, error)

    @property
    def writer(self) -> Any:
        """The TensorBoard writer, made on first use."""
        if self._writer is None:
            from tensorboardX import SummaryWriter

            self._writer = SummaryWriter(str(self.root / "tensorboard"))
        return self._writer

    def _append_metrics(self, line: dict[str, Any]) -> None:
        # Rewritten whole rather than appended: object stores have no append.
        path = self.root / "metrics.jsonl"
        previous = path.read_text() if path.exists() else ""
        path.write_text(previous + json.dumps(line) + "\n")

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
        if not self.writes:
            return
        path = self.root / "predictions" / dataset / f"{tag}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(record) + "\n" for record in predictions))
        self._append_metrics(
            {"checkpoint": tag, "step": step, "dataset": dataset, "time": time.time(), **metrics}
        )
        for name, value in metrics.items():
            self.writer.add_scalar(f"eval/{dataset}/{name}", float(value), global_step=step or 0)
        self.writer.flush()

    def write_failure(self, dataset: str, tag: str, step: int | None, error: str) -> None:
        """Record that `dataset` could not be evaluated on checkpoint `tag`: a metrics line with
        its error (no metric), and an entry in `failed` for the exit status."""
        if self.writes:
            line = {"checkpoint": tag, "step": step, "dataset": dataset, "time": time.time()}
            self._append_metrics(dict(line, failed=True, error=error))
        self.failed.append((tag, dataset, error))

    def done_steps(self) -> set[int]:
        """Steps a watch job has finished (all datasets written), from eval/done.json."""
        path = self.root / "done.json"
        return set(json.loads(path.read_text())["steps"]) if path.exists() else set()

    def mark_done(self, step: int) -> None:
        """Add `step` to eval/done.json, so a restarted watch job skips it."""
        if not self.writes:
            return
        steps = sorted(self.done_steps() | {step})
        tmp = self.root / "done.json.tmp"
        tmp.write_text(json.dumps({"steps": steps}))
        # Written aside and renamed into place: a crash never leaves half a file.
        tmp.replace(self.root / "done.json")

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


def _evaluate_dataset(
    config: ml_collections.ConfigDict, data_config: Any, dataset: str, program: Any, tokenizer: Any
) -> Any:
    """One dataset on every process: this process's shard, gathered and scored (EvalResult)."""
    from tqdm import tqdm

    from data_pipelines import eval_pipeline, preprocess, sources
    from ib_jax.eval import evaluators

    split = config.eval.get("split", "eval")
    process, count = jax.process_index(), jax.process_count()
    error = None
    try:
        evaluator = evaluators.make_evaluator(_eval_settings(config, dataset), tokenizer)
        entry = eval_pipeline.find_eval_entry(data_config, dataset, split)
        max_bad_fraction = float(preprocess.setting(data_config, "max_bad_fraction"))
        total = len(sources.load_records(entry, max_bad_fraction))
    except Exception as e:  # every process must skip the dataset, not only the one that failed
        error = e
    hosts.raise_if_any(error, f"read {dataset}")
    with tqdm(
        total=len(range(process, total, count)),
        desc=dataset,
        unit="ex",
        leave=False,
        disable=process != 0,
    ) as bar:
        batches = eval_pipeline.build_eval_dataset(
            data_config, dataset, split, process_index=process, process_count=count
        )
        return evaluator.run(program, batches, bar.update, max_bad_fraction)


def evaluate_checkpoint(
    config: ml_collections.ConfigDict,
    loaded: Any,
    outputs: Outputs,
) -> dict[str, dict[str, float]]:
    """Every dataset of config.eval on one loaded checkpoint (`load_model`); writes outputs,
    returns {dataset: metrics} (the same on every process)."""
    from data_pipelines import text
    from ib_jax.eval import program as program_lib

    program, tag, step = loaded.program, loaded.tag, loaded.step
    model = program.model
    # A copy: the run config is locked, and the eval batch size is set on the data config.
    data_config = ml_collections.ConfigDict(config.data.to_dict())
    data_config.eval_batch_size = int(
        config.eval.get("batch_size", data_config.get("eval_batch_size", 8))
    )
    program_lib.check_batch(data_config.eval_batch_size, program.mesh)
    # The evaluated model's LM family sets the text conventions, and its token ids must be the
    # tokenizer's.
    data_config.lm_type = model.config.lm_type
    tokenizer = text.LMTokenizer(str(data_config.lm_spm), text_format(data_config.lm_type))
    tokenizer.check_model(model.config.text)
    results = {}
    for dataset in config.eval.datasets:
        try:
            result = _evaluate_dataset(config, data_config, dataset, program, tokenizer)
        except Exception as error:  # one dataset's bad files or outputs must not stop the rest
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


def _pending(workdir: str, outputs: Outputs, skip: set[int]) -> list[int]:
    """Finalized steps not yet evaluated, as process 0 sees them (the same list everywhere)."""
    return hosts.on_first(
        lambda: [
            s
            for s in checkpoint_lib.finalized_steps(workdir)
            if s not in outputs.done_steps() and s not in skip
        ]
    )


def watch(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    poll_seconds: float = 30.0,
    timeout_seconds: float = 3600.0,
    outputs: Outputs | None = None,
) -> list[int]:
    """Evaluate every new checkpoint once until training is finished or `timeout_seconds` pass
    without a new checkpoint. Returns the steps evaluated by this call. A checkpoint that cannot
    be loaded is recorded as failed (dataset "checkpoint") and not retried by this job."""
    outputs = outputs or Outputs(workdir)
    evaluated_now: list[int] = []
    unloadable: set[int] = set()
    last_progress = time.monotonic()
    while True:
        for step in _pending(workdir, outputs, unloadable):
            error, loaded = None, None
            try:
                loaded = load_model(config, workdir, step)
            except Exception as e:  # recorded below, on every process alike
                logger.exception("step %d: cannot be loaded", step)
                error = e
            try:
                hosts.raise_if_any(error, f"load step {step}")
            except Exception as e:
                outputs.write_failure("checkpoint", f"step_{step}", step, f"{e}")
                unloadable.add(step)
                continue
            evaluate_checkpoint(config, loaded, outputs)
            outputs.mark_done(step)
            evaluated_now.append(step)
            last_progress = time.monotonic()
        # The marker is checked after a final scan, so the last checkpoint is never missed.
        finished = hosts.on_first(
            lambda: _training_finished(config, workdir, outputs.done_steps() | unloadable)
        )
        if finished:
            if not _pending(workdir, outputs, unloadable):
                return evaluated_now
            continue
        idle = time.monotonic() - last_progress
        if hosts.on_first(lambda idle=idle: idle > timeout_seconds):  # process 0's clock decides
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
    others still run. Every process of the job calls this."""
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
        return evaluate_checkpoint(config, load_model(config, workdir, checkpoint), outputs)
    finally:
        outputs.close()


def main(argv: list[str]) -> None:
    """The command line (flags from `_define_flags`); results are logged per dataset."""
    from absl import flags

    from ib_jax import cli, distributed

    del argv
    FLAGS = flags.FLAGS
    cli.quiet_console()
    # Before any other jax call: a multi-host job forms its process group first, as training.
    distributed.initialize(FLAGS.config)
    cli.log_to_file(FLAGS.workdir, "evaluate", jax.process_index(), jax.process_count())
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

    from ib_jax import cli

    _define_flags()
    app.run(cli.guarded("evaluate", main))  # one line + exit status per failure class
