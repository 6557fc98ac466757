"""InstructBLIP FlanT5-XL (released architecture): EVA ViT-g + Q-Former + FlanT5-XL.

Weights: convert the released checkpoint with `python -m ib_jax.convert` and point
`config.init.pretrained` at the output. Data: the paper's held-in mixture (data_pipelines).
"""

import ml_collections

from configs import common, data_heldin


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """`arg` goes to the data config (data_heldin: `root=...,batch=...`); default batch 192."""
    return flant5(arg, text=common.FLAN_T5_XL, batch_size=192)  # the paper: 192 for the 3B LM


def flant5(arg: str | None, text: dict, batch_size: int) -> ml_collections.ConfigDict:
    """InstructBLIP with a FlanT5 LM of size `text`, the paper's `batch_size` unless `arg` says."""
    config = ml_collections.ConfigDict()
    config.model = common.model(common.EVA_VIT_G, common.QFORMER_BASE, dict(text))
    config.init = ml_collections.ConfigDict(dict(pretrained=""))
    config.mesh = common.mesh(data=-1, fsdp=1, tensor=1)
    config.train = common.train()
    config.checkpoint = common.checkpoint()
    # A `batch=` in `arg` comes last, so it overrides the paper's size.
    config.data = data_heldin.get_config(f"batch={batch_size}" + (f",{arg}" if arg else ""))
    return config
