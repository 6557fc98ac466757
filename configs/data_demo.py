"""Data config of the embedded demo (rendered shapes; data_pipelines/demo_data.py).

`get_config("root=/some/dir")` puts the demo data elsewhere (default: workdirs/demo_data). The demo
files are written on first use by `data_pipelines.demo_data.ensure_demo_dataset(root, ...)` with
the `demo_num_train` / `demo_num_eval` / `seed` below; every path here is derived from `root`.
"""

import os

import ml_collections

from data_pipelines import demo_data


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    options = dict(item.split("=", 1) for item in arg.split(",")) if arg else {}
    root = options.get("root", "workdirs/demo_data")
    images = os.path.join(root, "images")
    ann = lambda name: os.path.join(root, "annotations", f"{name}.json")  # noqa: E731

    config = ml_collections.ConfigDict()
    config.demo_root = root
    config.demo_num_train = 600
    config.demo_num_eval = 100
    # Training mixture: registry names; weights ~ sqrt(#records) x multiplier.
    config.datasets = [
        {"name": "demo_vqa", "ann_path": ann("vqa_train"), "image_root": images, "multiplier": 2.0},
        {
            "name": "demo_caption",
            "ann_path": ann("caption_train"),
            "image_root": images,
            "multiplier": 1.0,
        },
        {"name": "demo_mc", "ann_path": ann("mc_train"), "image_root": images, "multiplier": 1.0},
        {"name": "demo_qg", "ann_path": ann("vqa_train"), "image_root": images, "multiplier": 0.5},
    ]
    # Held-out evaluation: images never seen in training.
    config.eval_datasets = [
        {"name": "demo_vqa", "split": "eval", "ann_path": ann("vqa_eval"), "image_root": images},
        {
            "name": "demo_caption",
            "split": "eval",
            "ann_path": ann("caption_eval"),
            "image_root": images,
        },
        {"name": "demo_mc", "split": "eval", "ann_path": ann("mc_eval"), "image_root": images},
    ]
    config.image_size = 64
    config.num_frames = 4
    config.qformer_max_len = 48
    config.text_max_len = 48
    config.target_max_len = 24
    config.qformer_vocab = demo_data.DEMO_VOCAB
    config.lm_spm = demo_data.DEMO_SPM
    config.global_batch_size = 16
    config.eval_batch_size = 16
    config.seed = 0
    config.worker_count = 0
    config.worker_buffer_size = 8
    config.prefetch_batches = 2
    config.max_bad_fraction = 0.01
    config.bad_fraction_min_examples = 100
    config.augment = False
    return config
