"""The eval job's command line.

    python -m ib_jax.eval --config=configs/... --workdir=DIR [--checkpoint=...] [--watch]
    python -m ib_jax.evaluate ...   (the documented alias)

One-shot: evaluates one checkpoint, either
  --checkpoint=STEP      a training checkpoint DIR/checkpoints/STEP (Orbax, item "params"),
  --checkpoint=PATH      a directory written by `ib_jax.convert` or an HF InstructBLIP directory,
  (none)                 the latest training checkpoint in DIR.
The model is the checkpoint's: a config without a `model` section evaluates any architecture;
one with a model section that disagrees is refused (exit 3), naming the fields.
Watch (--watch): polls DIR/checkpoints and evaluates every new step exactly once; finished steps
are recorded in DIR/eval/done.json (so a restarted job skips them); stops once the training job
has written DIR/TRAINING_DONE (or a step >= config.train.num_steps is evaluated), or after
--watch_timeout seconds without a new checkpoint.
What is evaluated is declared in `config.evals` (configs/evals.py); outputs go under DIR/eval/
(ib_jax/eval/outputs.py), library logs to DIR/logs/evaluate.log (`ib_jax.contract.cli`).
"""

from __future__ import annotations

import jax
from absl import app, flags

from ib_jax import distributed, summary
from ib_jax.contract import cli
from ib_jax.eval import job
from ib_jax.eval.outputs import Outputs


def main(argv: list[str]) -> None:
    """The command line (flags from `define_flags`); results are logged per evaluation."""
    del argv
    FLAGS = flags.FLAGS
    cli.quiet_console()
    # Before any other jax call: a multi-host job forms its process group first, as training.
    distributed.initialize(FLAGS.config)
    cli.log_to_file(FLAGS.workdir, "evaluate", jax.process_index(), jax.process_count())
    outputs = Outputs(FLAGS.workdir)
    job.run(
        FLAGS.config,
        FLAGS.workdir,
        FLAGS.checkpoint or None,
        watch_mode=FLAGS.watch,
        poll_seconds=FLAGS.poll_seconds,
        timeout_seconds=FLAGS.watch_timeout,
        outputs=outputs,
    )
    if jax.process_index() == 0:  # the closing summary: metrics, where predictions/pages are
        print(summary.closing_summary("evaluate", FLAGS.workdir))
    if outputs.failed:  # exit status 1, naming each failed evaluation and why
        raise SystemExit(
            "evaluation failed for: "
            + "; ".join(f"{dataset} ({tag}): {error}" for tag, dataset, error in outputs.failed)
        )


def define_flags() -> None:
    """Flags of the eval job; defined only when it runs as a program, because `ib_jax.train`
    runs the job after its own --config and --workdir are defined."""
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


def run_program() -> None:
    """Define the flags and run the job with one-line failures (`cli.guarded`)."""
    define_flags()
    cli.list_in_help("config", "workdir", "checkpoint", "watch", "poll_seconds", "watch_timeout")
    app.run(cli.guarded("evaluate", main))


if __name__ == "__main__":
    run_program()
