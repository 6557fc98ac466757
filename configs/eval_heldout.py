"""Zero-shot evaluation on the paper's 13 held-out datasets (InstructBLIP Table 1), FlanT5-XL.

`python -m ib_jax.evaluate --config=configs/eval_heldout.py --workdir=DIR --checkpoint=CONVERTED_DIR`
Fill in the annotation paths (`--config.data.eval_datasets` entries, or edit `PATHS` below, or
pass `get_config("root=/data")` to derive them from one root). Prompts and decoding come from the
dataset registry (data_pipelines/registry.py): QA beam 5, max 10 new tokens, length penalty -1;
captions beam 5, max 80, min 10; candidate ranking for ScienceQA, IconQA, MSVD/MSRVTT-QA,
Visual Dialog (100 options, MRR) and HatefulMemes (P("yes") vs "no", AUC). Video datasets sample
4 frames; the model encodes each and concatenates the per-frame query outputs (4 x 32 tokens).
"""

import os

import ml_collections

from configs import common

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

# (annotation file, image/video root, parse options) relative to `root`; replace with your layout.
PATHS = {
    "nocaps": ("nocaps/nocaps_val_4500_captions.json", "nocaps/images", {}),
    "flickr30k": ("flickr30k/dataset_flickr30k.json", "flickr30k/images", {"split": "test"}),
    "gqa": ("gqa/testdev_balanced_questions.json", "gqa/images", {}),
    "vsr": ("vsr/zeroshot/test.jsonl", "vsr/images", {}),
    "iconqa": ("iconqa/problems.json", "iconqa", {"split": "test"}),
    "textvqa": ("textvqa/TextVQA_0.5.1_val.json", "textvqa/train_images", {}),
    "vizwiz": ("vizwiz/Annotations/val.json", "vizwiz/val", {}),
    "scienceqa": ("scienceqa/problems.json", "scienceqa/images", {"split": "test"}),
    "msvd_qa": ("msvd/test_qa.json", "msvd/frames", {}),
    "msrvtt_qa": ("msrvtt/test_qa.json", "msrvtt/frames", {}),
    "ivqa": ("ivqa/test.csv", "ivqa/frames", {}),
    "visdial": ("visdial/visdial_1.0_val.json", "visdial/VisualDialog_val2018", {}),
    "hateful_memes": ("hateful_memes/dev_seen.jsonl", "hateful_memes", {}),
}

# Per-dataset settings beyond the registry (ib_jax.eval.evaluators.EvalSettings fields).
OVERRIDES = {
    # Fixed two-way choices, scored by likelihood; the first candidate is the positive class (AUC).
    "hateful_memes": {"candidates": ["yes", "no"]},
    # VSR's answer space is binary: rank "true" / "false" instead of free generation.
    "vsr": {"eval_mode": "rank", "candidates": ["true", "false"]},
    # Visual Dialog ranks 100 options per round: bounded memory with 20 candidates per decoder pass.
    "visdial": {"candidate_chunk": 20},
    # MSVD/MSRVTT-QA rank over the answer vocabulary: list it here (e.g. the training answers).
    "msvd_qa": {"candidates": []},
    "msrvtt_qa": {"candidates": []},
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    options = dict(item.split("=", 1) for item in arg.split(",")) if arg else {}
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
            eval_datasets=[
                {
                    "name": name,
                    "split": "eval",
                    "ann_path": os.path.join(root, PATHS[name][0]),
                    "image_root": os.path.join(root, PATHS[name][1]),
                    "parse_options": PATHS[name][2],
                }
                for name in datasets
            ],
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
