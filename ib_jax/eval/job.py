"""The eval job: every declared evaluation (`config.evals`) on one checkpoint, or on each new
checkpoint of a training run as it appears (watch mode). `python -m ib_jax.eval` (or its alias
`python -m ib_jax.evaluate`) runs it; ib_jax/eval/__main__.py has the flags.

The job runs on the eval mesh (ib_jax/eval/program.py: `config.eval.mesh` or `config.mesh`), on
every process of a multi-host job: parameters are restored straight into their shardings
(ib_jax/eval/loading.py; the model is the one the checkpoint was saved with, and a config whose
model section disagrees is refused), each process reads its shard of every eval set, and the
predictions are gathered so that metrics are computed once and the outputs written once, by
process 0, in the dataset's order (ib_jax/eval/runner.py).

Each evaluation is declared in the run config (ib_jax/contract/config.py `Evaluation`: dataset,
mode, prompt, decoding, candidates, metric, batch size; configs/evals.py has the paper's). An
evaluation that cannot run (missing files, too many unreadable images or non-finite outputs, a
metric that cannot be computed, bad settings) is logged with its error and written to
metrics.jsonl as {"dataset", "failed": true, "error"}; the others still run, and the job exits
with status 1 naming the failed ones. Outputs: ib_jax/eval/outputs.py.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import jax
import ml_collections
from tqdm import tqdm

from data_pipelines import eval_pipeline, model_checks, preprocess, sources, text
from ib_jax import checkpoint as checkpoint_lib
from ib_jax.contract import config as config_types
from ib_jax.contract.text import text_format
from ib_jax.eval import evaluators, hosts, loading, pages, submission
from ib_jax.eval import program as program_lib
from ib_jax.eval.outputs import Outputs

logger = logging.getLogger(__name__)


def load_model(
    config: ml_collections.ConfigDict, workdir: str, checkpoint: str | int | None
) -> loading.Loaded:
    """The loaded program for a step of the run (None: the latest) or a converted / HF
    directory, its parameters on the eval mesh."""
    return loading.load(config, workdir, checkpoint)


def _evaluate(
    run: config_types.RunConfig,
    data_config: ml_collections.ConfigDict,
    evaluation: config_types.Evaluation,
    program: program_lib.InferenceProgram,
    tokenizer: Any,
) -> Any:
    """One evaluation on every process: this process's shard, gathered and scored (EvalResult)."""
    split = evaluation.split or run.eval.split
    batch_size = evaluation.batch_size or run.eval.batch_size
    process, count = jax.process_index(), jax.process_count()
    error = None
    try:
        program_lib.check_batch(batch_size, program.mesh)
        evaluator = evaluators.make_evaluator(evaluation, tokenizer)
        entry = eval_pipeline.find_eval_entry(data_config, evaluation.dataset, split)
        max_bad_fraction = float(preprocess.setting(data_config, "max_bad_fraction"))
        total = len(sources.load_records(entry, max_bad_fraction))
    except Exception as e:  # every process must skip the evaluation, not only the one that failed
        error = e
    hosts.raise_if_any(error, f"read {evaluation.name}")
    with tqdm(
        total=len(range(process, total, count)),
        desc=evaluation.name,
        unit="ex",
        leave=False,
        disable=process != 0,
    ) as bar:
        batches = eval_pipeline.build_eval_dataset(
            data_config,
            evaluation.dataset,
            split,
            process_index=process,
            process_count=count,
            prompt=evaluation.prompt,
            batch_size=batch_size,
        )
        return evaluator.run(program, batches, bar.update, max_bad_fraction)


def evaluate_checkpoint(
    config: ml_collections.ConfigDict, loaded: loading.Loaded, outputs: Outputs
) -> dict[str, dict[str, float]]:
    """Every declared evaluation on one loaded checkpoint (`load_model`); writes outputs,
    returns {evaluation: metrics} (the same on every process)."""
    run = config_types.RunConfig.from_config(config)
    program, tag, step = loaded.program, loaded.tag, loaded.step
    model = program.model
    # A copy: the run config is locked, and the image size and lengths follow the evaluated
    # model (a config without a model section evaluates whatever the checkpoint holds).
    data_config = ml_collections.ConfigDict(config.data.to_dict())
    declared = preprocess.setting(data_config, "lm_type")
    if declared != model.config.lm_type:
        # The config's tokenizer, text layout and declared decoding are another family's.
        raise loading.ModelMismatchError(
            f"the eval config is for {declared!r} language models (data.lm_type: its tokenizer, "
            f"text layout and decoding) but {tag} holds a {model.config.lm_type!r} LM; evaluate "
            "it with a config for that family (configs/eval_heldout.py: lm=)"
        )
    data_config.image_size = model.config.vision.image_size
    for message in model_checks.fit_lengths(data_config, model.config):
        logger.warning("%s", message)
    tokenizer = text.LMTokenizer(str(data_config.lm_spm), text_format(declared))
    tokenizer.check_model(model.config.text)
    results = {}
    for evaluation in run.evals:
        try:
            result = _evaluate(run, data_config, evaluation, program, tokenizer)
        except Exception as error:  # one evaluation's bad files or outputs must not stop the rest
            logger.exception("%s %s: evaluation failed", tag, evaluation.name)
            message = f"{type(error).__name__}: {error}"
            outputs.write_failure(evaluation.name, tag, step, message)
            results[evaluation.name] = {"error": message}
            continue
        outputs.write(evaluation.name, tag, step, result.metrics, result.predictions)
        if outputs.writes:
            split = evaluation.split or run.eval.split
            _write_views(data_config, evaluation, split, tag, result, outputs)
        logger.info("%s %s: %s", tag, evaluation.name, result.metrics)
        results[evaluation.name] = result.metrics
    return results


def _write_views(
    data_config: ml_collections.ConfigDict,
    evaluation: config_types.Evaluation,
    split: str,
    tag: str,
    result: Any,
    outputs: Outputs,
) -> None:
    """Beside the predictions file: the evaluation server's file for a split only its server
    scores (VizWiz test-dev), and a page of sample predictions with their pictures. Views of
    what is already written: a failure is logged, never fails the evaluation."""
    folder = outputs.root / "predictions" / evaluation.name
    server_file = submission.WRITERS.get(evaluation.dataset)
    if server_file is not None:
        path = folder / f"{tag}.server.json"
        count = server_file(str(path), result.predictions)
        logger.info(
            "%s %s: %d answers for the evaluation server in %s", tag, evaluation.name, count, path
        )
    try:
        entry = eval_pipeline.find_eval_entry(data_config, evaluation.dataset, split)
        page = pages.write_predictions_page(
            str(folder / f"{tag}.jsonl"),
            result.predictions,
            sources.load_records(entry, 1.0),
            evaluation=evaluation.name,
            metric=evaluation.metric,
            checkpoint=tag,
            metrics=result.metrics,
        )
        logger.info("%s %s: sample predictions in %s", tag, evaluation.name, page)
    except Exception as error:  # the metrics are written; the page is only a view of them
        logger.warning("%s %s: no predictions page: %s", tag, evaluation.name, error)


def _training_finished(
    config: ml_collections.ConfigDict, workdir: str, evaluated: set[int]
) -> bool:
    """The training job wrote its marker, or a step >= config.train.num_steps was evaluated."""
    if checkpoint_lib.training_done(workdir):
        return True
    num_steps = config_types.build(config_types.TrainConfig, "train", config.get("train")).num_steps
    return "train" in config and any(step >= num_steps for step in evaluated)


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
