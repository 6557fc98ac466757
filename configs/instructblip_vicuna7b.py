"""InstructBLIP Vicuna-7B (released architecture): EVA ViT-g + Q-Former + Vicuna-7B v1.1.

Weights: convert the released checkpoint with `python -m ib_jax.convert` (LAVIS: the trimmed
InstructBLIP file + `--vit` + `--language_model` Vicuna-7B v1.1) and point `config.init.pretrained`
at the output. Data: the paper's held-in mixture (data_pipelines).
"""

import ml_collections

from configs import common

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
    return dict(
        VICUNA,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_heads,
    )


VICUNA_7B = vicuna(hidden_size=4096, intermediate_size=11008, num_layers=32, num_heads=32)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    config = ml_collections.ConfigDict()
    config.model = common.model(common.EVA_VIT_G, common.QFORMER_BASE, VICUNA_7B, lm_type="llama")
    config.init = ml_collections.ConfigDict(dict(pretrained=""))
    config.mesh = common.mesh(data=-1, fsdp=1, tensor=1)
    config.train = common.train(batch_size=128)  # the paper: 128 for the 7B models
    config.checkpoint = common.checkpoint()
    config.data = ml_collections.ConfigDict()  # the held-in mixture: see configs/data_heldin.py
    return config
