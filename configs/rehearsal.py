"""The paper's recipe in miniature: the real data configs, a tiny model, a few steps.

    python -m data_pipelines.miniature --out=/tmp/mini
    python -m data_pipelines.check --config=configs/rehearsal.py:root=/tmp/mini
    python -m ib_jax.train --config=configs/rehearsal.py:root=/tmp/mini --workdir=/tmp/run
    python -m ib_jax.evaluate --config=configs/rehearsal.py:root=/tmp/mini --workdir=/tmp/run

The data sections are configs/data_heldin.py's mixture (all 13 held-in sources, their published
layouts under `root`) and configs/eval_heldout.py's 13 held-out datasets with its evaluation
overrides; the model is configs/tiny.py's (its vocabularies fit the demo tokenizers used here).
Options as data_heldin's (`train=scienceqa` finetunes on one dataset; `datasets=a+b` picks the
evaluation datasets; `<dataset>.<field>=V` overrides), plus `steps=N`. Decoding is shortened
(greedy, a few tokens) so that the 13 evaluations take seconds: the rehearsal checks that every
dataset flows through, not the scores.
"""

import ml_collections

from configs import common, data_heldin, eval_heldout, evals, tiny
from data_pipelines import demo_data, layouts

# Short decoding for every generated answer; ranking stays as configured.
_FAST_DECODING = dict(num_beams=1, max_new_tokens=4, min_new_tokens=1)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """A tiny run on the datasets under `root` (required)."""
    own = {"steps": 4, "datasets": "+".join(eval_heldout.HELD_OUT)}
    options, _ = layouts.parse_arg(arg, {**data_heldin.OPTIONS, "root": "", **own})
    if not options["root"]:
        raise ValueError("configs/rehearsal.py needs root=<directory of the datasets>")
    steps, evaluated = options["steps"], options["datasets"]
    arg = ",".join(
        [item for item in (arg or "").split(",") if not item.startswith(("steps=", "datasets="))]
        + [f"eval={evaluated}", "batch=8"]
    )
    config = tiny.get_config()
    config.data = data_heldin.get_config(arg)
    config.data.update(
        image_size=32,
        qformer_max_len=32,
        text_max_len=48,
        target_max_len=16,
        qformer_vocab=demo_data.DEMO_VOCAB,
        lm_spm=demo_data.DEMO_SPM,
        eval_batch_size=8,
        worker_count=0,
        prefetch_batches=0,
        augment=False,
        max_bad_fraction=0.001,
        bad_fraction_min_examples=100,
    )
    config.train.num_steps = steps
    config.train.warmup_steps = 1
    config.checkpoint.every_steps = steps
    config.eval = common.eval_job(batch_size=8)
    config.evals = evals.declare(evaluated.split("+"))
    for evaluation in config.evals.values():
        if evaluation.mode == "generate":
            evaluation.update(_FAST_DECODING)
    return config
