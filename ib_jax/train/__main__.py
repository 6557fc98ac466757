"""Train (and, with `config.eval.after_training`, evaluate the final checkpoint).

    python -m ib_jax.train --config=configs/demo.py --workdir=workdirs/demo [--config.x.y=...]

Running the same command again resumes from the latest checkpoint in the workdir. The console
shows progress and results; library logs go to WORKDIR/logs/train.log (`--verbosity=0` or
IB_JAX_VERBOSE=1 shows them on the console too). An error ends the job with one line naming its
cause, the traceback in that log file and an exit status per kind of failure (`ib_jax.contract.cli`).
"""

from __future__ import annotations

import jax
from absl import app, flags

from ib_jax import checkpoint, distributed, summary
from ib_jax.contract import cli
from ib_jax.contract.config import RunConfig
from ib_jax.eval import job
from ib_jax.train import trainer

_CONFIG = cli.define_config_flag()
_WORKDIR = cli.define_workdir_flag("checkpoints, metrics, logs and evaluation results go here")
flags.adopt_module_key_flags(cli)


def main(argv: list[str]) -> None:
    """Join the process group if there is one, train, then evaluate if the config asks."""
    del argv
    cli.quiet_console()
    config, workdir = _CONFIG.value, _WORKDIR.value
    run = RunConfig.from_config(config)  # every field known and typed before anything starts
    # Before any other jax call: initialize() must come first to form the process group.
    distributed.initialize(config)
    cli.log_to_file(workdir, "train", jax.process_index(), jax.process_count())
    metrics = trainer.train(config, workdir)
    # Process 0 writes the marker after training: every process must see it before deciding to
    # evaluate, since the evaluation is one job across all of them.
    distributed.barrier("ib_jax_training_returned")
    evaluated = checkpoint.training_done(workdir) and run.eval.after_training and bool(run.evals)
    if evaluated:
        job.run(config, workdir)
    if jax.process_index() == 0:  # the closing summary: checkpoint, metrics, where things are
        steps = run.train.num_steps
        print(summary.closing_summary("train", workdir, metrics, steps, evaluated))


if __name__ == "__main__":
    app.run(cli.guarded("train", main))
