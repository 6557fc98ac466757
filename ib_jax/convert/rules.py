"""Conversion tables: (source key pattern, target parameter path, hook), one table per format.

Targets name the unscanned layout; `core.stack_scanned` builds the scanned one. Placeholders in
targets: `{layer}` (the matched layer index) and, for the Q-Former, `{group}`/`{sub}` (layer i is
sub-layer i % freq of group i // freq). Hooks turn the torch tensor into the Flax array; the
target shape (from the model's abstract parameters) is given to them.

Hooks:
  linear   torch Linear weight [out, in] -> kernel [in, ...out] (transpose, then reshape)
  conv     torch Conv2d weight [D, C, ph, pw] -> kernel [ph, pw, C, D]
  reshape  same values, target shape (biases split per head, [1, N, D] positions...)

Each rule also has a `check(source shape, target shape) -> problem or None`, run on shapes alone
before any tensor is read, so that a conversion refuses bad input before it writes anything.

The same tables run backwards for export (`ib_jax.export`): `torch_shape` gives the source shape of
a target shape (by the hook, or the rule's `source_shape` where the hook cannot tell: a kernel with
two input axes, a flattened bias, a parameter HF keeps with leading 1s), `to_torch` inverts the hook.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np


def linear(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """torch Linear weight [out, in] -> kernel [in, ...out]."""
    return np.ascontiguousarray(x.T).reshape(shape)


def conv(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """torch Conv2d weight [D, C, ph, pw] -> kernel [ph, pw, C, D]."""
    return np.ascontiguousarray(x.transpose(2, 3, 1, 0)).reshape(shape)


def reshape(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The same values in the target shape."""
    return x.reshape(shape)


def same_size(source: tuple[int, ...], target: tuple[int, ...]) -> str | None:
    """The check of `linear`, `conv` and `reshape`: the element counts agree."""
    if math.prod(source) != math.prod(target):
        return f"{math.prod(source)} elements, the target holds {math.prod(target)}"
    return None


Shape = tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Rule:
    """Source keys matching `pattern` (anchored) become `target` through `hook`, if `check`
    finds nothing wrong with the shapes. `source_shape` (target shape -> source shape) is for
    export, where the hook alone does not determine it (see `torch_shape`)."""

    pattern: str
    target: str
    hook: Callable[[np.ndarray, Shape], np.ndarray] = reshape
    check: Callable[[Shape, Shape], str | None] = same_size
    source_shape: Callable[[Shape], Shape] | None = None


def flat(shape: Shape) -> Shape:
    """A torch bias kept 1-D, split per head in the target ([H, Dh] -> [H * Dh])."""
    return (math.prod(shape),)


def leading_one(shape: Shape) -> Shape:
    """A tensor HF keeps with a leading batch axis of 1 ([N, D] -> [1, N, D])."""
    return (1, *shape)


def linear_inputs(axes: int) -> Callable[[Shape], Shape]:
    """The torch [out, in] of a kernel whose first `axes` axes are its input ([H, Dh, D])."""
    return lambda shape: (math.prod(shape[axes:]), math.prod(shape[:axes]))


def torch_shape(rule: Rule, shape: Shape) -> Shape:
    """The source (torch) shape that `rule` turns into a target of `shape` (for export)."""
    if rule.source_shape is not None:
        return tuple(rule.source_shape(tuple(shape)))
    if rule.hook is linear:
        return linear_inputs(1)(shape)
    if rule.hook is conv:
        return (shape[3], shape[2], shape[0], shape[1])
    if rule.hook is reshape:
        return tuple(shape)
    raise ValueError(
        f"rule {rule.pattern} -> {rule.target} ({rule.hook.__name__}) cannot be inverted"
    )


def to_torch(rule: Rule, array: np.ndarray, shape: Shape) -> np.ndarray:
    """The inverse of `rule.hook`: a target array -> the source tensor of `shape` (`torch_shape`)."""
    if rule.hook is linear:
        return array.reshape(shape[1], shape[0]).T
    if rule.hook is conv:
        return array.transpose(3, 2, 0, 1)
    if rule.hook is reshape:
        return array.reshape(shape)
    raise ValueError(
        f"rule {rule.pattern} -> {rule.target} ({rule.hook.__name__}) cannot be inverted"
    )


def dense(src: str, dst: str, bias: bool = True, in_axes: int = 1) -> list[Rule]:
    """torch Linear `src.weight`/`src.bias` -> `dst/kernel`/`dst/bias`; `in_axes`: how many
    leading kernel axes are the input (2 for an attention output projection [H, Dh, D])."""
    inputs = None if in_axes == 1 else linear_inputs(in_axes)
    rules = [Rule(rf"{src}\.weight", f"{dst}/kernel", linear, source_shape=inputs)]
    return rules + [Rule(rf"{src}\.bias", f"{dst}/bias", source_shape=flat)] if bias else rules


def norm(src: str, dst: str, bias: bool = True) -> list[Rule]:
    """torch LayerNorm/RMSNorm `src.weight`/`src.bias` -> `dst/scale`/`dst/bias`."""
    rules = [Rule(rf"{src}\.weight", f"{dst}/scale")]
    return rules + [Rule(rf"{src}\.bias", f"{dst}/bias")] if bias else rules


def _qformer_attention(src: str, dst: str, self_names: tuple[str, str]) -> list[Rule]:
    inner, out = self_names
    rules = []
    for proj in ("query", "key", "value"):
        rules += dense(f"{src}\\.{inner}\\.{proj}", f"{dst}/{proj}")
    return (
        rules
        + dense(f"{src}\\.output\\.dense", f"{dst}/output_dense", in_axes=2)
        + norm(f"{src}\\.output\\.LayerNorm", f"{dst}/output_layernorm")
    )


def qformer_rules(prefix: str, inner_attention_name: str) -> list[Rule]:
    """HF names the inner attention `attention.attention`, LAVIS (BERT) `attention.self`."""
    layer = rf"{prefix}\.encoder\.layer\.(?P<layer>\d+)"
    dst = "qformer/groups_{group}/layer_{sub}"
    names = (inner_attention_name, "output")
    rules = [
        Rule(
            rf"{prefix}\.embeddings\.word_embeddings\.weight", "qformer/word_embeddings/embedding"
        ),
        Rule(
            rf"{prefix}\.embeddings\.position_embeddings\.weight",
            "qformer/position_embeddings/embedding",
        ),
        *_qformer_attention(rf"{layer}\.attention", f"{dst}/attention", names),
        *_qformer_attention(rf"{layer}\.crossattention", f"{dst}/crossattention", names),
        *dense(rf"{layer}\.intermediate_query\.dense", f"{dst}/ffn_query/intermediate"),
        *dense(rf"{layer}\.output_query\.dense", f"{dst}/ffn_query/output"),
        *norm(rf"{layer}\.output_query\.LayerNorm", f"{dst}/ffn_query/output_layernorm"),
        *dense(rf"{layer}\.intermediate\.dense", f"{dst}/ffn_text/intermediate"),
        *dense(rf"{layer}\.output\.dense", f"{dst}/ffn_text/output"),
        *norm(rf"{layer}\.output\.LayerNorm", f"{dst}/ffn_text/output_layernorm"),
    ]
    return rules


def t5_rules(prefix: str) -> list[Rule]:
    """`{prefix}.*` of a T5ForConditionalGeneration -> language_model/..."""
    rules = [
        Rule(rf"{prefix}\.shared\.weight", "language_model/shared/embedding"),
        Rule(rf"{prefix}\.lm_head\.weight", "language_model/lm_head/kernel", linear),
    ]
    for stack in ("encoder", "decoder"):
        block = rf"{prefix}\.{stack}\.block\.(?P<layer>\d+)\.layer"
        dst = f"language_model/{stack}/layers_{{layer}}"
        ffn_index = 2 if stack == "decoder" else 1
        rules += [
            Rule(
                rf"{prefix}\.{stack}\.block\.0\.layer\.0\.SelfAttention\.relative_attention_bias\.weight",
                f"language_model/{stack}/relative_attention_bias/embedding",
            ),
            *norm(
                rf"{prefix}\.{stack}\.final_layer_norm",
                f"language_model/{stack}/final_norm",
                bias=False,
            ),
            *norm(rf"{block}\.0\.layer_norm", f"{dst}/self_attention_norm", bias=False),
            *norm(rf"{block}\.{ffn_index}\.layer_norm", f"{dst}/mlp_norm", bias=False),
        ]
        for proj in "qkvo":
            rules += dense(
                rf"{block}\.0\.SelfAttention\.{proj}",
                f"{dst}/self_attention/{proj}",
                bias=False,
                in_axes=2 if proj == "o" else 1,
            )
        for proj in ("wi", "wi_0", "wi_1", "wo"):
            rules += dense(
                rf"{block}\.{ffn_index}\.DenseReluDense\.{proj}", f"{dst}/mlp/{proj}", bias=False
            )
        if stack == "decoder":
            rules += norm(rf"{block}\.1\.layer_norm", f"{dst}/cross_attention_norm", bias=False)
            for proj in "qkvo":
                rules += dense(
                    rf"{block}\.1\.EncDecAttention\.{proj}",
                    f"{dst}/cross_attention/{proj}",
                    bias=False,
                    in_axes=2 if proj == "o" else 1,
                )
    return rules


def vision_hf_rules() -> list[Rule]:
    """HF InstructBLIP/BLIP-2 vision tower (`vision_model.*`)."""
    layer = r"vision_model\.encoder\.layers\.(?P<layer>\d+)"
    dst = "vision/layers_{layer}"
    return [
        Rule(
            r"vision_model\.embeddings\.class_embedding",
            "vision/embeddings/class_embedding",
            source_shape=lambda shape: (1, 1, *shape),
        ),
        Rule(
            r"vision_model\.embeddings\.position_embedding",
            "vision/embeddings/position_embedding",
            source_shape=leading_one,
        ),
        Rule(
            r"vision_model\.embeddings\.patch_embedding\.weight",
            "vision/embeddings/patch_embedding/kernel",
            conv,
        ),
        Rule(
            r"vision_model\.embeddings\.patch_embedding\.bias",
            "vision/embeddings/patch_embedding/bias",
        ),
        *dense(rf"{layer}\.self_attn\.qkv", f"{dst}/self_attn/qkv"),
        *dense(rf"{layer}\.self_attn\.projection", f"{dst}/self_attn/projection", in_axes=2),
        *norm(rf"{layer}\.layer_norm1", f"{dst}/layer_norm1"),
        *norm(rf"{layer}\.layer_norm2", f"{dst}/layer_norm2"),
        *dense(rf"{layer}\.mlp\.fc1", f"{dst}/mlp/fc1"),
        *dense(rf"{layer}\.mlp\.fc2", f"{dst}/mlp/fc2"),
        *norm(r"vision_model\.post_layernorm", "vision/post_layernorm"),
    ]


def vision_lavis_rules() -> list[Rule]:
    """LAVIS EVA ViT (`visual_encoder.*`); q/v biases are fused by `core` into the qkv bias."""
    layer = r"visual_encoder\.blocks\.(?P<layer>\d+)"
    dst = "vision/layers_{layer}"
    return [
        Rule(r"visual_encoder\.cls_token", "vision/embeddings/class_embedding"),
        Rule(r"visual_encoder\.pos_embed", "vision/embeddings/position_embedding"),
        Rule(
            r"visual_encoder\.patch_embed\.proj\.weight",
            "vision/embeddings/patch_embedding/kernel",
            conv,
        ),
        Rule(r"visual_encoder\.patch_embed\.proj\.bias", "vision/embeddings/patch_embedding/bias"),
        Rule(rf"{layer}\.attn\.qkv\.weight", f"{dst}/self_attn/qkv/kernel", linear),
        Rule(
            rf"{layer}\.attn\.qkv_bias", f"{dst}/self_attn/qkv/bias"
        ),  # made by core.fuse_lavis_qkv_bias
        *dense(rf"{layer}\.attn\.proj", f"{dst}/self_attn/projection"),
        *norm(rf"{layer}\.norm1", f"{dst}/layer_norm1"),
        *norm(rf"{layer}\.norm2", f"{dst}/layer_norm2"),
        *dense(rf"{layer}\.mlp\.fc1", f"{dst}/mlp/fc1"),
        *dense(rf"{layer}\.mlp\.fc2", f"{dst}/mlp/fc2"),
        *norm(r"ln_vision", "vision/post_layernorm"),
    ]


def hf_image_rules() -> list[Rule]:
    """Everything up to the language projection, as HF names it (shared by every language model)."""
    return [
        Rule(r"query_tokens", "qformer/query_tokens", source_shape=leading_one),
        *vision_hf_rules(),
        *norm(r"qformer\.embeddings\.layernorm", "qformer/embeddings_layernorm"),
        *qformer_rules("qformer", "attention"),
        *dense(r"language_projection", "language_projection"),
    ]


def lavis_image_rules(projection: str) -> list[Rule]:
    """Everything up to the language projection, as LAVIS names it (`t5_proj` or `llm_proj`)."""
    return [
        Rule(r"query_tokens", "qformer/query_tokens"),
        *vision_lavis_rules(),
        *norm(r"Qformer\.bert\.embeddings\.LayerNorm", "qformer/embeddings_layernorm"),
        *qformer_rules(r"Qformer\.bert", "self"),
        *dense(projection, "language_projection"),
    ]


# The tables of the T5 family (`LMFamily.conversion` names this module): HF and LAVIS rules,
# aliases and unused keys, the LAVIS key prefix of the LM, and whether a checkpoint without an
# lm_head key reads its logits off the shared embedding (T5's tied head). The same names exist in
# every family's module (llama_rules.py).
LAVIS_PREFIX = "t5_model."
TIE_HEADLESS = True
DECODER_ONLY = False  # HF `use_decoder_only_language_model`
# The `<image>` row when no tokenizer says: HF's processor gives it 32100, the first of FlanT5's
# padding rows past the tokenizer's 32100 pieces (used when the vocabulary is larger).
IMAGE_TOKEN_INDEX: int | None = 32100
# The projection key of a LAVIS BLIP-2 stage-2 checkpoint of this family (`blip2_t5`).
LAVIS_STAGE2_PROJECTION: str | None = "t5_proj.weight"

HF_LM_RULES: list[Rule] = t5_rules("language_model")
LAVIS_LM_RULES: list[Rule] = t5_rules("t5_model")

HF_RULES: list[Rule] = [*hf_image_rules(), *HF_LM_RULES]
HF_UNUSED: list[str] = []

# Keys that exist in the files but carry no parameter of their own: tied copies and buffers.
HF_ALIASES: dict[str, str] = {
    r"language_model\.(encoder|decoder)\.embed_tokens\.weight": "language_model.shared.weight",
}

LAVIS_RULES: list[Rule] = [*lavis_image_rules(r"t5_proj"), *LAVIS_LM_RULES]

LAVIS_ALIASES: dict[str, str] = {
    r"t5_model\.(encoder|decoder)\.embed_tokens\.weight": "t5_model.shared.weight",
}

# Present in released files, not parameters of InstructBLIP: buffers, heads LAVIS drops, the
# EVA ViT-g's last block and final norm (LAVIS uses 39 of its 40 blocks).
LAVIS_UNUSED: list[str] = [
    r"Qformer\.bert\.embeddings\.position_ids",
    r"Qformer\.cls\..*",
    r"visual_encoder\.norm\..*",
    r"visual_encoder\.head\..*",
    r"visual_encoder\.fc_norm\..*",
    r"visual_encoder\.blocks\.(?P<layer>\d+)\..*",  # only when layer >= the configured depth
]


def hf_ties_head(text) -> bool:
    """Whether the exported T5 reads its logits off the shared embedding. transformers 4 scales
    the decoder output by d_model**-0.5 exactly when it ties the head (5 reads
    `scale_decoder_outputs`), so a tied head without the scaling is written as an lm_head of its
    own (export.py's `_head_copy`), which both read alike."""
    return text.tie_word_embeddings and text.scale_decoder_outputs


def hf_text_config(t) -> dict[str, Any]:
    """T5Config -> HF `text_config` (the inverse of hf_config.py's `_t5`)."""
    if t.is_gated_act:
        # "gated-gelu" means the tanh form in transformers; exact GELU is "gelu_python" there.
        act = {"gelu_new": "gelu", "gelu": "gelu_python"}.get(t.dense_act_fn, t.dense_act_fn)
        proj = f"gated-{act}"
    else:
        proj = t.dense_act_fn
    return dict(
        model_type="t5",
        vocab_size=t.vocab_size,
        d_model=t.d_model,
        d_kv=t.d_kv,
        d_ff=t.d_ff,
        num_layers=t.num_layers,
        num_decoder_layers=t.num_decoder_layers,
        num_heads=t.num_heads,
        relative_attention_num_buckets=t.relative_attention_num_buckets,
        relative_attention_max_distance=t.relative_attention_max_distance,
        layer_norm_epsilon=t.layer_norm_epsilon,
        feed_forward_proj=proj,
        dense_act_fn=t.dense_act_fn,
        is_gated_act=t.is_gated_act,
        # Tied only when no lm_head is written (see `hf_ties_head`); the scaling is explicit.
        tie_word_embeddings=hf_ties_head(t),
        scale_decoder_outputs=t.scale_decoder_outputs,
        is_encoder_decoder=True,
        pad_token_id=t.pad_token_id,
        eos_token_id=t.eos_token_id,
        decoder_start_token_id=t.decoder_start_token_id,
    )
