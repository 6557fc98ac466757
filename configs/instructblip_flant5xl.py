"""InstructBLIP FlanT5-XL (released architecture): EVA ViT-g + Q-Former + FlanT5-XL.

Starting points (`config.init.pretrained`: a directory written by `python -m ib_jax.convert`):
- The paper's: BLIP-2 FlanT5-XL, instruction-tuned from there.
  `python -m ib_jax.convert --blip2=blip2-flan-t5-xl/ --bert=bert-base-uncased/ --out=DIR` (an HF
  `Blip2ForConditionalGeneration` directory; or LAVIS's `blip2_pretrained_flant5xl.pth` with
  `--vit=eva_vit_g.pth --language_model=flan-t5-xl/ --config=configs/instructblip_flant5xl.py`):
  ViT, Q-Former, query tokens, projection and FlanT5-XL from BLIP-2; the Q-Former's text side
  (word/position embeddings, each layer's text feed-forward), which BLIP-2 stage 2 does not keep,
  from BERT, plus a fresh `[DEC]` row. Trained: the Q-Former with its text side, query tokens,
  projection and `ln_vision` (`config.train.trainable`); ViT and LM frozen.
- The released InstructBLIP (already instruction-tuned), to evaluate or fine-tune: convert it
  with `--hf=DIR` or `--lavis=...` (see ib_jax/convert/__main__.py).
Data: the paper's held-in mixture (configs/data_heldin.py).
"""

import ml_collections

from configs import common, data_heldin, evals


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """`arg` goes to the data config (data_heldin: `root=...,batch=...`); default batch 192."""
    return flant5(arg, text=common.FLAN_T5_XL, batch_size=192)  # the paper: 192 for the 3B LM


def flant5(arg: str | None, text: dict, batch_size: int) -> ml_collections.ConfigDict:
    """InstructBLIP with a FlanT5 LM of size `text`, the paper's `batch_size` unless `arg` says."""
    config = ml_collections.ConfigDict()
    config.model = common.model(common.EVA_VIT_G, common.QFORMER_BASE, dict(text))
    config.init = common.init()
    config.mesh = common.mesh(data=-1, fsdp=1, tensor=1)
    config.train = common.train()
    config.checkpoint = common.checkpoint()
    # A `batch=` in `arg` comes last, so it overrides the paper's size.
    config.data = data_heldin.get_config(f"batch={batch_size}" + (f",{arg}" if arg else ""))
    # Evaluations of the data config's `eval=` entries (none by default), as configs/evals.py
    # declares them.
    config.eval = common.eval_job(batch_size=config.data.eval_batch_size)
    config.evals = evals.declare([entry["name"] for entry in config.data.eval_datasets])
    return config
