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
  tfds=DIR            read every dataset from the TFDS datasets `python -m data_pipelines.prepare
                      --out=DIR` wrote (DIR/<dataset>/<train|eval>/) instead of the raw files
  <dataset>.<field>=V per-dataset override: ann_path (a path, or "+"-joined paths), image_root,
                      or a parse option, typed as its parser declares it (e.g.
                      `llava_conversation.turns=first`, `scienceqa.split=val`, `ocrvqa.split=3`)

An unknown option or field is refused, naming the closest known one (data_pipelines/layouts.py).
The tokenizers are the released models': BERT-base-uncased `vocab.txt` (the Q-Former's, + [DEC])
and FlanT5's `spiece.model`, expected at ROOT/tokenizers/ (`python -m data_pipelines.miniature`
puts the demo tokenizers there, so the miniature runs with this config as it is). `python -m data_pipelines.check
--config=...` checks every file before a run; `python -m data_pipelines.prepare` turns the
entries into TFDS datasets (array_record).
"""

import os

import ml_collections

from data_pipelines import layouts, registry

# The paper (Sec. 2.4) lowered A-OKVQA and raised OKVQA by hand; neither it nor LAVIS publishes
# the factors (docs/PROTOCOL.md, "mixture adjustments"), so they stay neutral.
MULTIPLIERS = {"okvqa": 1.0, "aokvqa": 1.0}


# This config's options (name -> default; layouts.parse_arg types each value as its default).
OPTIONS = {"root": "/data/instructblip", "batch": 192, "train": "", "eval": ""}
# What data_heldin.entries reads, shared with the configs that take this config's options.
ENTRY_OPTIONS = {"frames": False, "tfds": ""}
OPTIONS.update(ENTRY_OPTIONS)


def entries(
    names: list[str], split: str, root: str, options: dict, per_dataset: dict
) -> list[dict]:
    """The data-config entries of `names` (layouts.entry) with their overrides, or with
    `options["tfds"]` the TFDS datasets `data_pipelines.prepare` wrote for them."""
    if options.get("tfds"):
        if per_dataset:
            raise ValueError(
                f"tfds= reads prepared datasets; per-dataset fields {sorted(per_dataset)} apply "
                "to the raw files (give them to `python -m data_pipelines.prepare` instead)"
            )
        # prepare writes DIR/<dataset>/<split>/1.0.0; the reader takes the newest version.
        return [
            {"name": name, "tfds": os.path.join(options["tfds"], name, split), "split": split}
            for name in names
        ]
    return [
        layouts.entry(
            name, split, root, frames=options.get("frames", False), overrides=per_dataset.get(name)
        )
        for name in names
    ]


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The held-in mixture under `root` (see the module docstring for the options)."""
    options, per_dataset = layouts.parse_arg(arg, OPTIONS)
    root = options["root"]
    train = options["train"].split("+") if options["train"] else registry.held_in()
    evals = options["eval"].split("+") if options["eval"] else []
    config = ml_collections.ConfigDict()
    config.datasets = [
        {**e, "multiplier": MULTIPLIERS.get(e["name"], 1.0)}
        for e in entries(train, "train", root, options, per_dataset)
    ]
    config.eval_datasets = entries(evals, "eval", root, options, per_dataset)
    config.image_size = 224
    config.num_frames = 4
    # Fixed padded shapes; one compilation per run. LAVIS truncates instructions at
    # `max_txt_len` 128 and targets at `max_output_txt_len` 256 (blip2_t5_instruct.from_config).
    config.qformer_max_len = 128
    config.text_max_len = 128
    config.target_max_len = 256
    config.qformer_vocab = os.path.join(root, "tokenizers", "bert-base-uncased-vocab.txt")
    config.lm_spm = os.path.join(root, "tokenizers", "spiece.model")
    config.global_batch_size = options["batch"]
    config.eval_batch_size = 64
    config.seed = 0
    config.worker_count = 8
    config.worker_buffer_size = 8
    config.prefetch_batches = 2
    config.max_bad_fraction = 0.001
    config.bad_fraction_min_examples = 1000
    config.augment = True
    return config
