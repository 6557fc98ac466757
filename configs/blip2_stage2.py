"""BLIP-2 stage 2 for a new language model, with the instruction-tuning trainer: how the paper got a
Q-Former + projection for Vicuna (no BLIP-2-Vicuna was released).

The model is InstructBLIP's with `instruction_aware=False`: the Q-Former sees the image only (no
instruction tokens, so it has no text side: no word/position embeddings, no text feed-forward),
as in BLIP-2. Training starts from the LAVIS stage-1 Q-Former (`blip2_pretrained.pth`, which
ViT-g/Q-Former pretraining produced), the EVA ViT-g and the language model from their own files,
and a projection drawn fresh from `init.seed` (ib_jax/convert/blip2.py `initial_params`); the
Q-Former, its query tokens, the projection and `ln_vision` (`vision/post_layernorm`) are trained,
the ViT and the LM frozen, on image-caption data: the held-in caption datasets (configs/
data_heldin.py `train=coco_caption+web_capfilt`; BLIP-2 used COCO, Visual Genome, CC, SBU and
LAION with CapFilt captions). The LM's prompt is the caption instruction template of the data
pipeline (BLIP-2 prompted Vicuna-style decoders with nothing and split FlanT5 captions into a
prefix and a suffix); the loss is on the caption.

Recipe (BLIP-2, Sec. 3.5): AdamW (0.9, 0.98), weight decay 0.05, linear warmup over 2,000 steps to
1e-4, cosine decay to 5e-5, 80,000 steps. Batch 1920 was BLIP-2's for ViT-g stage 2 with OPT; a
`batch=` in the argument overrides it.

  python -m ib_jax.train --config=configs/blip2_stage2.py:root=/data/instructblip,weights=/ckpt \\
      --workdir=workdirs/blip2_stage2_vicuna7b

Options (comma-separated, with data_heldin's: `root=`, `batch=`, `train=`, per-dataset fields):
  lm=vicuna7b|vicuna13b   the language model (default vicuna7b)
  weights=DIR             where the starting weights are: DIR/blip2_pretrained.pth (LAVIS stage 1),
                          DIR/eva_vit_g.pth, DIR/vicuna-7b/ (or vicuna-13b/), an HF directory

What comes next: instruction tuning starts from this run's Q-Former, query tokens and projection
plus a Q-Former text side (the stage-1 checkpoint's word/position embeddings and text feed-forward,
which stage 2 leaves untouched). `python -m ib_jax.export` writes a trained stage-2 model as an HF
`Blip2ForConditionalGeneration`.
"""

import os

import ml_collections

from configs import common
from configs.instructblip_vicuna7b import VICUNA_7B, heldin_data
from configs.instructblip_vicuna13b import VICUNA_13B

LANGUAGE_MODELS = {"vicuna7b": (VICUNA_7B, "vicuna-7b"), "vicuna13b": (VICUNA_13B, "vicuna-13b")}
CAPTION_DATA = "coco_caption+web_capfilt"


def _own_options(arg: str | None) -> tuple[dict[str, str], str]:
    """(this config's options, the rest of `arg` for the data config)."""
    own, rest = {}, []
    for item in (arg or "").split(","):
        key = item.split("=", 1)[0].strip()
        if key in ("lm", "weights"):
            own[key] = item.split("=", 1)[1] if "=" in item else ""
        elif item.strip():
            rest.append(item)
    return own, ",".join(rest)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """`arg`: see the module docstring (e.g. `root=/data,weights=/ckpt,lm=vicuna13b,batch=256`)."""
    own, data_arg = _own_options(arg)
    name = own.get("lm", "vicuna7b")
    if name not in LANGUAGE_MODELS:
        raise ValueError(f"blip2_stage2: lm={name!r}, one of {', '.join(LANGUAGE_MODELS)}")
    text, lm_dir = LANGUAGE_MODELS[name]
    weights = own.get("weights", "/data/instructblip/weights")

    config = ml_collections.ConfigDict()
    config.model = common.model(
        common.EVA_VIT_G, common.QFORMER_BASE, text, lm_type="llama", instruction_aware=False
    )
    # A BLIP-2 start (ib_jax/convert/blip2.py `initial_params`): the stage-1 Q-Former holds no
    # projection for this LM, so it is drawn from `seed`; `bert` is for stage-2 files only.
    config.init = ml_collections.ConfigDict(
        dict(
            pretrained="",
            blip2=os.path.join(weights, "blip2_pretrained.pth"),
            bert="",
            vit=os.path.join(weights, "eva_vit_g.pth"),
            language_model=os.path.join(weights, lm_dir),
            seed=0,
        )
    )
    config.mesh = common.mesh(data=-1, fsdp=1, tensor=1)
    config.train = common.train(
        num_steps=80_000,
        warmup_steps=2_000,
        warmup_init_lr=1e-6,
        learning_rate=1e-4,
        end_learning_rate=5e-5,
        b2=0.98,
        weight_decay=0.05,
    )
    # Q-Former (with its query tokens), projection and ln_vision: the default trainable set.
    config.checkpoint = common.checkpoint(every_steps=5_000)
    # `train=` first: one in `arg` comes later and overrides it (as does a `batch=`).
    config.data = heldin_data(f"train={CAPTION_DATA}" + (f",{data_arg}" if data_arg else ""), 1920)
    config.data.lm_type = config.model.get_ref("lm_type")
    # Captions are short (BLIP-2 cut them at 32 tokens); the caption template is the prompt.
    config.data.text_max_len = 32
    config.data.target_max_len = 32
    return config
