"""Pieces shared by the configs: released architectures, training recipe, mesh and axis rules."""

from __future__ import annotations

import ml_collections

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
    aware queries, precision "bf16_mixed" (ib_jax/models/precision.py: frozen towers stored and
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
    """The paper's recipe: AdamW(0.9, 0.999), wd 0.05, warmup 1e-8 -> 1e-5 over 1000 steps, cosine to 0."""
    values = dict(
        num_steps=60_000,
        warmup_steps=1_000,
        warmup_init_lr=1e-8,
        learning_rate=1e-5,
        end_learning_rate=0.0,
        weight_decay=0.05,
        b1=0.9,
        b2=0.999,
        grad_clip_norm=0.0,
        grad_accum_steps=1,
        # Regexes over "/"-joined parameter paths; everything else is frozen (no gradient, no optimizer state).
        trainable=[r"^qformer/", r"^language_projection/", r"^vision/post_layernorm/"],
        frozen_dtype="",  # "": from config.model.precision (else bfloat16)
        log_every=50,
        seed=0,
        stop_after_steps=0,  # > 0: save and return after this many steps of this invocation (time-boxed jobs)
        peak_flops_per_device=0.0,  # for MFU where the device kind is not in ib_jax/train/flops.py
    )
    values.update(overrides)
    return ml_collections.ConfigDict(values)


def checkpoint(**overrides) -> ml_collections.ConfigDict:
    """`config.checkpoint`: save every `every_steps`, keep the newest `keep`, write asynchronously;
    `on_unreadable`: "fallback" (set a damaged newest checkpoint aside, resume from an older one)
    or "stop" (ib_jax/train/resume.py)."""
    values = dict(every_steps=2_000, keep=3, async_save=True, on_unreadable="fallback")
    values.update(overrides)
    return ml_collections.ConfigDict(values)
