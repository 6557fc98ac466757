"""Pieces shared by the configs: released architectures, training recipe, mesh and axis rules."""

from __future__ import annotations

import ml_collections

from ib_jax.contract import config as config_types
from ib_jax.contract.model import lora_defaults

# EVA ViT-g/14 as used by BLIP-2/InstructBLIP (39 of its 40 blocks), BERT-base Q-Former + [DEC].
EVA_VIT_G = dict(
    hidden_size=1408,
    intermediate_size=6144,
    num_layers=39,
    num_heads=16,
    image_size=224,
    patch_size=14,
    layer_norm_eps=1e-6,
    hidden_act="gelu",
)
QFORMER_BASE = dict(
    vocab_size=30523,
    hidden_size=768,
    intermediate_size=3072,
    num_layers=12,
    num_heads=12,
    max_position_embeddings=512,
    layer_norm_eps=1e-12,
    cross_attention_frequency=2,
    encoder_hidden_size=1408,
    hidden_act="gelu",
)
# FlanT5 (T5 v1.1): gated GELU ("gated-gelu" reads as the tanh approximation in HF), untied head,
# no output scaling.
FLAN_T5 = dict(
    vocab_size=32128,
    d_kv=64,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    layer_norm_epsilon=1e-6,
    dense_act_fn="gelu_new",
    is_gated_act=True,
    tie_word_embeddings=False,
    scale_decoder_outputs=False,
    pad_token_id=0,
    eos_token_id=1,
    decoder_start_token_id=0,
)
FLAN_T5_XL = dict(
    FLAN_T5, d_model=2048, d_ff=5120, num_layers=24, num_decoder_layers=24, num_heads=32
)
FLAN_T5_XXL = dict(
    FLAN_T5, d_model=4096, d_ff=10240, num_layers=24, num_decoder_layers=24, num_heads=64
)

# Logical axis -> mesh axis. Parameters are sharded over fsdp (and tensor for the wide dims);
# activations over data+fsdp on the batch, tensor on heads/mlp/vocab.
AXIS_RULES = (
    ("act_batch", ("data", "fsdp")),
    ("act_length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("qkv", None),
    ("vocab", "tensor"),
    ("layers", None),
)


def model(
    vision: dict, qformer: dict, text: dict, lm_type: str = "t5", **overrides
) -> ml_collections.ConfigDict:
    """`config.model`: the three towers' sizes plus the composition's defaults (32 instruction-
    aware queries, precision "bf16_mixed" (ib_jax/contract/precision.py: frozen towers stored and
    run in bf16, fp32 master weights for the trainable ones), scanned layers, remat policy
    dots_no_batch). Overrides naming the old `dtype`/`param_dtype` fields without `precision`
    keep those fields in charge (precision left empty)."""
    values = dict(
        lm_type=lm_type,
        vision=dict(vision),
        qformer=dict(qformer),
        text=dict(text),
        num_query_tokens=32,
        instruction_aware=True,
        precision="bf16_mixed",
        dtype="",  # "": from precision
        param_dtype="",  # "": from precision
        scan_layers=True,
        remat_policy="dots_no_batch",
        lora=lora_defaults(),  # rank 0: no LoRA (ib_jax/models/lora.py)
    )
    if "precision" not in overrides and {"dtype", "param_dtype"} & set(overrides):
        values["precision"] = ""
    values.update(overrides)
    return ml_collections.ConfigDict(values)


def mesh(data: int = -1, fsdp: int = 1, tensor: int = 1) -> ml_collections.ConfigDict:
    """-1 takes the devices left over by the other axes."""
    return ml_collections.ConfigDict(
        dict(
            shape=dict(data=data, fsdp=fsdp, tensor=tensor),
            axis_rules=[list(rule) for rule in AXIS_RULES],
        )
    )


def train(**overrides) -> ml_collections.ConfigDict:
    """`config.train`: the paper's recipe (defaults: ib_jax/contract/config.py `TrainConfig`)."""
    return ml_collections.ConfigDict(config_types.defaults(config_types.TrainConfig, **overrides))


def checkpoint(**overrides) -> ml_collections.ConfigDict:
    """`config.checkpoint` (defaults: ib_jax/contract/config.py `CheckpointConfig`)."""
    return ml_collections.ConfigDict(
        config_types.defaults(config_types.CheckpointConfig, **overrides)
    )


def init(**overrides) -> ml_collections.ConfigDict:
    """`config.init`: where step 0's parameters come from (`InitConfig`; all empty: random)."""
    return ml_collections.ConfigDict(config_types.defaults(config_types.InitConfig, **overrides))


def eval_job(**overrides) -> ml_collections.ConfigDict:
    """`config.eval`: how the eval job runs (`EvalJobConfig`); the evaluations themselves are
    declared in `config.evals` (configs/evals.py)."""
    values = config_types.defaults(config_types.EvalJobConfig, **overrides)
    if values["mesh"] is None:
        values["mesh"] = ml_collections.config_dict.placeholder(dict)
    return ml_collections.ConfigDict(values)
