"""Data config of the embedded demo (rendered shapes; data_pipelines/demo_data.py).

`get_config("root=/some/dir")` puts the demo data elsewhere (default: workdirs/demo_data);
`num_train=`, `num_eval=` and `seed=` (the same arg string, comma-separated, or keyword arguments
for the first two) size and seed the rendering. Every entry names its generator
(`generate={"kind": "demo_shapes", ...}`), so the files are written on first use by whichever
data code reads an entry first (`data_pipelines.sources.load_records`); every path here is
derived from `root`. `tfds=DIR` reads every entry from the TFDS datasets that
`python -m data_pipelines.prepare --config=configs/demo.py --out=DIR` wrote instead
(`DIR/<dataset>/<split>`), e.g. `--config=configs/demo.py:tfds=/data/demo_tfds`.
"""

import os

import ml_collections

from data_pipelines import demo_data, layouts


def get_config(
    arg: str | None = None, *, num_train: int = 600, num_eval: int = 100
) -> ml_collections.ConfigDict:
    """The demo's data config; `arg` options (root, num_train, num_eval, seed) override."""
    known = {"root": "workdirs/demo_data", "num_train": num_train, "num_eval": num_eval}
    known.update(seed=0, tfds="")
    options, _ = layouts.parse_arg(arg, known)  # an unknown key is refused, naming the known
    root = options["root"]
    images = os.path.join(root, "images")
    generate = {
        "kind": "demo_shapes",
        "root": root,
        "num_train": options["num_train"],
        "num_eval": options["num_eval"],
        "seed": options["seed"],
    }

    def entry(name: str, annotations: str, **fields) -> dict:
        if options["tfds"]:
            split = fields.get("split", "train")
            return dict(name=name, tfds=os.path.join(options["tfds"], name, split), **fields)
        ann_path = os.path.join(root, "annotations", f"{annotations}.json")
        return dict(name=name, ann_path=ann_path, image_root=images, generate=generate, **fields)

    config = ml_collections.ConfigDict()
    # Training mixture: registry names; weights ~ sqrt(#records) x multiplier.
    config.datasets = [
        entry("demo_vqa", "vqa_train", multiplier=2.0),
        entry("demo_caption", "caption_train", multiplier=1.0),
        entry("demo_mc", "mc_train", multiplier=1.0),
        entry("demo_qg", "vqa_train", multiplier=0.5),
    ]
    # Held-out evaluation: images never seen in training.
    config.eval_datasets = [
        entry("demo_vqa", "vqa_eval", split="eval"),
        entry("demo_caption", "caption_eval", split="eval"),
        entry("demo_mc", "mc_eval", split="eval"),
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
