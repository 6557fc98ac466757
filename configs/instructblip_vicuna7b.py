"""InstructBLIP Vicuna-7B (released architecture): EVA ViT-g + Q-Former + Vicuna-7B v1.1.

Starting points (`config.init.pretrained`: a directory written by `python -m ib_jax.convert`):
- The paper's: a BLIP-2 with Vicuna, never released: the paper first trained it (BLIP-2 stage 2,
  configs/blip2_stage2.py) from the LAVIS stage-1 Q-Former. That stage-1 start converts with
  `python -m ib_jax.convert --blip2=blip2_pretrained.pth --vit=eva_vit_g.pth
  --language_model=vicuna-7b/ --config=configs/instructblip_vicuna7b.py --seed=0 --out=DIR`: the
  Q-Former (with its text side, which stage 1 trains) and query tokens from
  `blip2_pretrained.pth`, the ViT from EVA's file, Vicuna-7B v1.1 from its directory (its embedding
  and head get the `[PAD]` row), the projection drawn fresh from `--seed` (instruction tuning from
  it directly skips stage 2). Trained: the Q-Former, query tokens, projection and `ln_vision`
  (`config.train.trainable`); ViT and LM frozen.
- The released InstructBLIP (already instruction-tuned), to evaluate or fine-tune: convert it
  (LAVIS: the trimmed InstructBLIP file + `--vit` + `--language_model` Vicuna-7B v1.1).
Data: the paper's held-in mixture (configs/data_heldin.py) tokenized as LAVIS does
for Vicuna (`</s>` as BOS, `[PAD]` = 32000; data_pipelines/text.py), with LLaMA's SentencePiece
model expected at ROOT/tokenizers/llama-tokenizer.model.
"""

import os

import ml_collections

from configs import common, data_heldin, evals

# Vicuna v1.1 (LLaMA): RMSNorm 1e-6, rotary theta 1e4, SwiGLU, untied head. The vocabulary and the
# token ids are those of LAVIS's tokenizer: LLaMA's 32000 + [PAD] (32000); </s> (2) is BOS and EOS.
VICUNA = dict(
    vocab_size=32001,
    rms_norm_eps=1e-6,
    rope_theta=10000.0,
    max_position_embeddings=2048,
    hidden_act="silu",
    tie_word_embeddings=False,
    bos_token_id=2,
    eos_token_id=2,
    pad_token_id=32000,
)


def vicuna(hidden_size: int, intermediate_size: int, num_layers: int, num_heads: int) -> dict:
    """`config.model.text` of a Vicuna v1.1 size (multi-head attention: kv heads = heads)."""
    return dict(
        VICUNA,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_heads,
    )


VICUNA_7B = vicuna(hidden_size=4096, intermediate_size=11008, num_layers=32, num_heads=32)


def heldin_data(arg: str | None, batch_size: int) -> ml_collections.ConfigDict:
    """The held-in mixture (configs/data_heldin.py, the same as FlanT5's) with Vicuna's text.

    `arg` as data_heldin's (`root=...,batch=...`); `batch_size` is the paper's default.
    """
    data = data_heldin.get_config(f"batch={batch_size}" + (f",{arg}" if arg else ""))
    # LLaMA's SentencePiece model (the same for 7B and 13B), next to the Q-Former vocab.
    data.lm_spm = os.path.join(os.path.dirname(data.qformer_vocab), "llama-tokenizer.model")
    # LAVIS: instructions truncated at max_txt_len=128 ids (the `</s>` BOS included), targets at
    # 256 with their BOS, i.e. 255. LAVIS appends "</s>" before truncating, so a Vicuna target cut
    # at the limit loses its end token (T5's keeps it): 128 rather than FlanT5's 64 keeps most
    # LLaVA-Instruct answers whole, at a [32 queries][128][128] = 288-slot decoder sequence.
    data.text_max_len = 128
    data.target_max_len = 128
    return data


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """`arg` goes to the data config (data_heldin: `root=...,batch=...`); default batch 128."""
    config = ml_collections.ConfigDict()
    config.model = common.model(common.EVA_VIT_G, common.QFORMER_BASE, VICUNA_7B, lm_type="llama")
    config.init = common.init()
    config.mesh = common.mesh(data=-1, fsdp=1, tensor=1)
    config.train = common.train()
    config.checkpoint = common.checkpoint()
    config.data = heldin_data(arg, batch_size=128)  # the paper: 128 for the 7B models
    # The tokenizer follows the model's family (a --config.model.lm_type override carries over).
    config.data.lm_type = config.model.get_ref("lm_type")
    config.eval = common.eval_job(batch_size=config.data.eval_batch_size)
    config.evals = evals.declare(
        [entry["name"] for entry in config.data.eval_datasets], lm_type="llama"
    )
    return config
