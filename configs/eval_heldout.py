"""Zero-shot evaluation on the paper's 13 held-out datasets (InstructBLIP Table 1), FlanT5-XL.

`python -m ib_jax.evaluate --config=configs/eval_heldout.py --workdir=DIR --checkpoint=CONVERTED_DIR`
`--config=configs/eval_heldout.py:root=/data`: every dataset is found under `root` in its
published layout (data_pipelines/layouts.py; docs/DATASETS.md says what to download and where it
goes). Options, comma-separated: `root=`, `datasets=a+b` (a subset), `frames=1` (video sets from
pre-extracted frame folders), `<dataset>.<field>=V` (per-dataset override of ann_path,
image_root or a parse option, e.g. `msrvtt_qa.answer_vocab_size=1000`).

Prompts and decoding come from the dataset registry (data_pipelines/registry.py): QA beam 5, max
10 new tokens, length penalty -1; captions beam 5, max 80, min 10; candidate ranking for
ScienceQA, IconQA (its multiple-choice-with-text subset, as the paper reports), MSVD/MSRVTT-QA
(the training split's answer vocabulary, as ALPRO/LAVIS build it), Visual Dialog (100 options,
MRR) and HatefulMemes (P("yes") vs "no", AUC). Video datasets sample 4 frames uniformly from the
video file; the model encodes each and concatenates the per-frame query outputs (4 x 32 tokens).
"""

import os

import ml_collections

from configs import common, data_heldin
from data_pipelines import layouts

HELD_OUT = (
    "nocaps",
    "flickr30k",
    "gqa",
    "vsr",
    "iconqa",
    "textvqa",
    "vizwiz",
    "scienceqa",
    "msvd_qa",
    "msrvtt_qa",
    "ivqa",
    "visdial",
    "hateful_memes",
)

# Per-dataset settings beyond the registry (ib_jax.eval.evaluators.EvalSettings fields).
OVERRIDES = {
    # Fixed two-way choices, scored by likelihood; the first candidate is the positive class (AUC).
    "hateful_memes": {"candidates": ["yes", "no"]},
    # VSR's answer space is binary: rank "true" / "false" instead of free generation.
    "vsr": {"eval_mode": "rank", "candidates": ["true", "false"]},
    # Visual Dialog ranks 100 options per round: bounded memory with 20 candidates per decoder pass.
    "visdial": {"candidate_chunk": 20},
    # MSVD/MSRVTT-QA rank the training split's answer vocabulary (each record's `choices`, see
    # data_pipelines/layouts.py EVAL_OPTIONS): ~2,000 candidates, scored 128 per decoder pass.
    "msvd_qa": {"candidate_chunk": 128},
    "msrvtt_qa": {"candidate_chunk": 128},
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """FlanT5-XL on the held-out datasets under `root` (options in the module docstring)."""
    options, per_dataset = layouts.parse_arg(arg)
    root = options.get("root", "/path/to/eval_data")
    datasets = options["datasets"].split("+") if "datasets" in options else list(HELD_OUT)

    config = ml_collections.ConfigDict()
    config.model = common.model(common.EVA_VIT_G, common.QFORMER_BASE, common.FLAN_T5_XL)
    config.data = ml_collections.ConfigDict(
        dict(
            image_size=224,
            num_frames=4,
            qformer_max_len=256,
            text_max_len=256,
            target_max_len=32,
            qformer_vocab=os.path.join(root, "tokenizers/bert-base-uncased-vocab.txt"),
            lm_spm=os.path.join(root, "tokenizers/flan-t5-spiece.model"),
            global_batch_size=16,
            eval_batch_size=16,
            seed=0,
            worker_count=4,
            worker_buffer_size=8,
            prefetch_batches=2,
            max_bad_fraction=0.01,
            augment=False,
            eval_datasets=data_heldin.entries(datasets, "eval", root, options, per_dataset),
        )
    )
    config.eval = ml_collections.ConfigDict(
        dict(
            datasets=datasets,
            batch_size=16,
            split="eval",
            overrides={name: OVERRIDES.get(name, {}) for name in datasets},
        )
    )
    return config
