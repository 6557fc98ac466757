"""Data config of the paper's instruction tuning: the 13 held-in datasets, mixed ~ sqrt(size).

`get_config("root=/data/instructblip,batch=192")`: every dataset is found under `root` in the
layout its authors publish (the table is `data_pipelines/layouts.py`; docs/DATASETS.md says per
dataset what to download and where it goes). Options, comma-separated:

  root=DIR            where the datasets are (default /data/instructblip)
  batch=N             global batch size (default 192, the paper's for FlanT5-XL)
  train=a+b           finetune on these datasets (any of the 26; their "train" split) instead of
                      the held-in mixture, e.g. `train=scienceqa`
  eval=a+b            evaluation entries ("eval" split) to add to `eval_datasets`
  frames=1            video sets read pre-extracted frame folders instead of the video files
  <dataset>.<field>=V per-dataset override: ann_path (a path, or "+"-joined paths), image_root,
                      or a parse option (e.g. `llava_conversation.turns=first`)

The tokenizers are the released models': BERT-base-uncased `vocab.txt` (the Q-Former's, + [DEC])
and FlanT5's `spiece.model`, expected at ROOT/tokenizers/. `python -m data_pipelines.check
--config=...` checks every file before a run; `python -m data_pipelines.prepare` turns the
entries into TFDS datasets (array_record).
"""

import os

import ml_collections

from data_pipelines import layouts, registry

# The paper lowered A-OKVQA and raised OKVQA by hand; it does not publish the factors.
MULTIPLIERS = {"okvqa": 1.0, "aokvqa": 1.0}


def entries(
    names: list[str], split: str, root: str, options: dict, per_dataset: dict
) -> list[dict]:
    """The data-config entries of `names` (layouts.entry), with their overrides."""
    frames = options.get("frames", "0").lower() in ("1", "true", "yes")
    return [
        layouts.entry(name, split, root, frames=frames, **per_dataset.get(name, {}))
        for name in names
    ]


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The held-in mixture under `root` (see the module docstring for the options)."""
    options, per_dataset = layouts.parse_arg(arg)
    root = options.get("root", "/data/instructblip")
    train = options["train"].split("+") if options.get("train") else registry.held_in()
    evals = options["eval"].split("+") if options.get("eval") else []
    config = ml_collections.ConfigDict()
    config.datasets = [
        {**e, "multiplier": MULTIPLIERS.get(e["name"], 1.0)}
        for e in entries(train, "train", root, options, per_dataset)
    ]
    config.eval_datasets = entries(evals, "eval", root, options, per_dataset)
    config.image_size = 224
    config.num_frames = 4
    # Fixed padded shapes (LAVIS truncates instructions at 128 tokens); one compilation per run.
    config.qformer_max_len = 128
    config.text_max_len = 128
    config.target_max_len = 64
    config.qformer_vocab = os.path.join(root, "tokenizers", "bert-base-uncased-vocab.txt")
    config.lm_spm = os.path.join(root, "tokenizers", "spiece.model")
    config.global_batch_size = int(options.get("batch", 192))
    config.eval_batch_size = 64
    config.seed = 0
    config.worker_count = 8
    config.worker_buffer_size = 8
    config.prefetch_batches = 2
    config.max_bad_fraction = 0.001
    config.bad_fraction_min_examples = 1000
    config.augment = True
    return config
