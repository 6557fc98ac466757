"""InstructBLIP Vicuna-13B (released architecture): EVA ViT-g + Q-Former + Vicuna-13B v1.1.

Weights: convert the released checkpoint with `python -m ib_jax.convert` (LAVIS: the trimmed
InstructBLIP file + `--vit` + `--language_model` Vicuna-13B v1.1) and point `config.init.pretrained`
at the output. Data: as configs/instructblip_vicuna7b.py (the held-in mixture, Vicuna's text).
"""

import ml_collections

from configs import common
from configs.instructblip_vicuna7b import heldin_data, vicuna

VICUNA_13B = vicuna(hidden_size=5120, intermediate_size=13824, num_layers=40, num_heads=40)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """`arg` goes to the data config (data_heldin: `root=...,batch=...`); default batch 64."""
    config = ml_collections.ConfigDict()
    config.model = common.model(common.EVA_VIT_G, common.QFORMER_BASE, VICUNA_13B, lm_type="llama")
    config.init = ml_collections.ConfigDict(dict(pretrained=""))
    config.mesh = common.mesh(data=-1, fsdp=1, tensor=1)
    config.train = common.train()
    config.checkpoint = common.checkpoint()
    config.data = heldin_data(arg, batch_size=64)  # the paper: 64 for the 11B/13B models
    config.data.lm_type = config.model.get_ref("lm_type")
    return config
