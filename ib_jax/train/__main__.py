"""python -m ib_jax.train --config=configs/demo.py --workdir=workdirs/demo [--config.train.num_steps=...]"""

from __future__ import annotations

import json
import logging
import os

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "configs/*.py file (get_config(arg))", lock_config=True
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "checkpoints, metrics and evaluation results go here"
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    del argv
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from ib_jax import distributed

    distributed.initialize(_CONFIG.value)

    from ib_jax.train import trainer

    config, workdir = _CONFIG.value, _WORKDIR.value
    trainer.train(config, workdir)
    finished = os.path.exists(os.path.join(workdir, trainer.FINAL_MARKER))
    if finished and config.get("eval") and config.eval.get("after_training", False):
        from ib_jax import evaluate

        results = evaluate.run(config, workdir)
        print("held-out evaluation of the final checkpoint:")
        print(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    app.run(main)
