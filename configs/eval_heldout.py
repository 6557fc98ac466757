"""Zero-shot evaluation on the paper's 13 held-out datasets (InstructBLIP Table 1), FlanT5-XL by
default, or another of the paper's language models with `lm=`.

`python -m ib_jax.evaluate --config=configs/eval_heldout.py --workdir=DIR --checkpoint=CONVERTED_DIR`
`--config=configs/eval_heldout.py:root=/data`: every dataset is found under `root` in its
published layout (data_pipelines/layouts.py; docs/DATASETS.md says what to download and where it
goes). Options, comma-separated: `root=`, `datasets=a+b` (a subset), `frames=1` (video sets from
pre-extracted frame folders), `tfds=DIR` (the datasets `data_pipelines.prepare` wrote),
`<dataset>.<field>=V` (per-dataset override of ann_path,
image_root or a parse option, e.g. `msrvtt_qa.answer_vocab_size=1000`), `lm=` one of LMS:
flant5xl (default), flant5xxl, vicuna7b, vicuna13b (`vicuna` = vicuna7b). The Vicuna models read
the LLaMA SentencePiece model `root/tokenizers/llama-tokenizer.model` (as
configs/instructblip_vicuna7b.py) with LAVIS's Vicuna text layout and lengths; the model section
must match the evaluated checkpoint (the eval job refuses one that disagrees).

The evaluations are declared in `config.evals` (configs/evals.py: prompt, generate or rank,
candidates, decoding and metric per dataset; docs/PROTOCOL.md gives their sources): QA beam 5,
max 10 new tokens, length penalty -1; captions beam 5, max 80, min 10; candidate ranking for
ScienceQA, IconQA (its multiple-choice-with-text subset, as the paper reports), MSVD/MSRVTT-QA
(the training split's answer vocabulary, as ALPRO/LAVIS build it), Visual Dialog (100 options,
MRR), HatefulMemes (P("yes") vs "no", AUC) and VSR ("true" / "false"). Every field can be
overridden: `--config.evals.gqa.prompt="Question: {question} Answer:"`. Video datasets sample 4
frames uniformly from the video file; the model encodes each and concatenates the per-frame
query outputs (4 x 32 tokens).

The evaluated model is the checkpoint's (any architecture, converted or trained): the config has
no model section. `model=1` adds the `lm=` model's released architecture, and the job then
refuses a checkpoint that is another model (exit 3, naming the fields that differ).
"""

import os

import ml_collections

from configs import common, data_heldin, evals, instructblip_vicuna7b, instructblip_vicuna13b
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

# `lm=` -> (text config, LM family, SentencePiece file under root/tokenizers, text_max_len,
# target_max_len). Vicuna's lengths are its training config's (LAVIS max_txt_len 128).
LMS = {
    "flant5xl": (common.FLAN_T5_XL, "t5", "spiece.model", 256, 32),
    "flant5xxl": (common.FLAN_T5_XXL, "t5", "spiece.model", 256, 32),
    "vicuna7b": (instructblip_vicuna7b.VICUNA_7B, "llama", "llama-tokenizer.model", 128, 128),
    "vicuna13b": (instructblip_vicuna13b.VICUNA_13B, "llama", "llama-tokenizer.model", 128, 128),
}
LMS["vicuna"] = LMS["vicuna7b"]
# This config's options (name -> default), with data_heldin's frames= and tfds=.
OPTIONS = {
    "root": "/path/to/eval_data",
    "datasets": "",
    "lm": "flant5xl",
    "model": False,
    **data_heldin.ENTRY_OPTIONS,
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The `lm=` model (default FlanT5-XL) on the held-out datasets under `root` (options in the
    module docstring)."""
    options, per_dataset = layouts.parse_arg(arg, OPTIONS)
    root = options["root"]
    datasets = options["datasets"].split("+") if options["datasets"] else list(HELD_OUT)
    lm = options["lm"]
    if lm not in LMS:
        raise ValueError(f"configs/eval_heldout.py: lm={lm!r} is not one of {sorted(LMS)}")
    text, lm_type, spm_file, text_max_len, target_max_len = LMS[lm]

    config = ml_collections.ConfigDict()
    if options["model"]:
        config.model = common.model(
            common.EVA_VIT_G, common.QFORMER_BASE, dict(text), lm_type=lm_type
        )
    config.data = ml_collections.ConfigDict(
        dict(
            image_size=224,
            num_frames=4,
            qformer_max_len=128,  # LAVIS max_txt_len (Q-Former input, cut from the left)
            text_max_len=text_max_len,
            target_max_len=target_max_len,
            qformer_vocab=os.path.join(root, "tokenizers/bert-base-uncased-vocab.txt"),
            lm_spm=os.path.join(root, "tokenizers", spm_file),
            lm_type=lm_type,  # the LM tokenizer's text conventions (data_pipelines/text.py)
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
    config.eval = common.eval_job(batch_size=16)
    config.evals = evals.declare(datasets, lm_type)  # LAVIS's decoding differs per LM family
    return config
