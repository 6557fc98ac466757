"""InstructBLIP Vicuna-13B (released architecture): EVA ViT-g + Q-Former + Vicuna-13B v1.1.

Starting points (`config.init.pretrained`: a directory written by `python -m ib_jax.convert`):
- The paper's: a BLIP-2 with Vicuna, never released: the paper first trained it (BLIP-2 stage 2,
  configs/blip2_stage2.py) from the LAVIS stage-1 Q-Former. That stage-1 start converts with
  `python -m ib_jax.convert --blip2=blip2_pretrained.pth --vit=eva_vit_g.pth
  --language_model=vicuna-13b/ --config=configs/instructblip_vicuna13b.py --seed=0 --out=DIR`: the
  Q-Former (with its text side, which stage 1 trains) and query tokens from
  `blip2_pretrained.pth`, the ViT from EVA's file, Vicuna-13B v1.1 from its directory (its embedding
  and head get the `[PAD]` row), the projection drawn fresh from `--seed` (instruction tuning from
  it directly skips stage 2). Trained: the Q-Former, query tokens, projection and `ln_vision`
  (`config.train.trainable`); ViT and LM frozen.
- The released InstructBLIP (already instruction-tuned), to evaluate or fine-tune: convert it
  (LAVIS: the trimmed InstructBLIP file + `--vit` + `--language_model` Vicuna-13B v1.1).
Data: as configs/instructblip_vicuna7b.py (the held-in mixture, Vicuna's text).
"""

import ml_collections

from configs import common, evals
from configs.instructblip_vicuna7b import heldin_data, vicuna

VICUNA_13B = vicuna(hidden_size=5120, intermediate_size=13824, num_layers=40, num_heads=40)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """`arg` goes to the data config (data_heldin: `root=...,batch=...`); default batch 64."""
    config = ml_collections.ConfigDict()
    config.model = common.model(common.EVA_VIT_G, common.QFORMER_BASE, VICUNA_13B, lm_type="llama")
    config.init = common.init()
    config.mesh = common.mesh(data=-1, fsdp=1, tensor=1)
    config.train = common.train()
    config.checkpoint = common.checkpoint()
    config.data = heldin_data(arg, batch_size=64)  # the paper: 64 for the 11B/13B models
    config.data.lm_type = config.model.get_ref("lm_type")
    config.eval = common.eval_job(batch_size=config.data.eval_batch_size)
    config.evals = evals.declare(
        [entry["name"] for entry in config.data.eval_datasets], lm_type="llama"
    )
    return config
