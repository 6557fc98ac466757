"""InstructBLIP FlanT5-XXL (released architecture): the FlanT5-XL config with FlanT5-XXL, batch 64.

Starting points (`config.init.pretrained`: a directory written by `python -m ib_jax.convert`):
- The paper's: BLIP-2 FlanT5-XXL, instruction-tuned from there.
  `python -m ib_jax.convert --blip2=blip2-flan-t5-xxl/ --bert=bert-base-uncased/ --out=DIR` (an HF
  `Blip2ForConditionalGeneration` directory; or LAVIS's `blip2_pretrained_flant5xxl.pth` with
  `--vit=eva_vit_g.pth --language_model=flan-t5-xxl/ --config=configs/instructblip_flant5xxl.py`):
  ViT, Q-Former, query tokens, projection and FlanT5-XXL from BLIP-2; the Q-Former's text side
  (word/position embeddings, each layer's text feed-forward), which BLIP-2 stage 2 does not keep,
  from BERT, plus a fresh `[DEC]` row. Trained: the Q-Former with its text side, query tokens,
  projection and `ln_vision` (`config.train.trainable`); ViT and LM frozen.
- The released InstructBLIP (already instruction-tuned), to evaluate or fine-tune: convert it
  with `--hf=DIR` or `--lavis=...` (see ib_jax/convert/__main__.py).
Data: the paper's held-in mixture (configs/data_heldin.py).
"""

import ml_collections

from configs import common, instructblip_flant5xl


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """`arg` as in instructblip_flant5xl; default batch 64 (the paper's for the 11B/13B LMs)."""
    return instructblip_flant5xl.flant5(arg, text=common.FLAN_T5_XXL, batch_size=64)
