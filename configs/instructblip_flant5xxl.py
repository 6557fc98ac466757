"""InstructBLIP FlanT5-XXL (released architecture): the FlanT5-XL config with FlanT5-XXL as the LM, batch 64.

Weights: convert the released checkpoint with `python -m ib_jax.convert` and point
`config.init.pretrained` at the output. Data: the paper's held-in mixture (configs/data_heldin.py).
"""

import ml_collections

from configs import common, instructblip_flant5xl


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """`arg` as in instructblip_flant5xl; default batch 64 (the paper's for the 11B/13B LMs)."""
    return instructblip_flant5xl.flant5(arg, text=common.FLAN_T5_XXL, batch_size=64)
