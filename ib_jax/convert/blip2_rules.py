"""Conversion tables for starting InstructBLIP from BLIP-2: BLIP-2 (HF or LAVIS) + BERT text side.

BLIP-2 stage-2 checkpoints (HF `Blip2ForConditionalGeneration`, LAVIS `blip2_t5`) hold no Q-Former
text side: LAVIS deletes the word/position embeddings and every layer's text feed-forward
(`intermediate`/`output`) before training stage 2, HF never builds them. LAVIS's InstructBLIP
(`Blip2Base.init_Qformer` + `blip2_t5_instruct.py`) fills them by loading `bert-base-uncased` into
the Q-Former, then resizing the word embeddings by one row for the `[DEC]` token its tokenizer adds
(`init_tokenizer`: `add_special_tokens({"bos_token": "[DEC]"})`), then loading the BLIP-2 checkpoint
over it. The BERT rows below reproduce that; every other BERT tensor is superseded by BLIP-2's.

The `[DEC]` row: transformers 4.33 (LAVIS's pin) resizes by building a new embedding, initialising
it with the Q-Former's `_init_weights` (normal, std = BERT's `initializer_range`, 0.02) and copying
the old rows over it; so the new last row is N(0, 0.02^2), drawn here from a seeded generator. The
instruction tokenizer never emits `[DEC]` (LAVIS sets it as BOS, which BERT's tokenizer does not
add); the row exists so that the vocabulary (30523) matches the released InstructBLIP models.

BERT keys are read with a `bert.` prefix (added after dropping the one a `BertForPreTraining` file
has) and old `LayerNorm.gamma`/`.beta` names are accepted (the original `bert-base-uncased` file).
"""

from __future__ import annotations

import numpy as np

from ib_jax.convert import rules
from ib_jax.convert.rules import Rule, dense, norm

BERT_PREFIX = "bert."
FRESH_PROJECTION = "fresh_init.language_projection"  # key of a freshly drawn projection

# 1 + the rows of the word embedding BERT has: the [DEC] row LAVIS appends.
DEC_ROWS = 1


def with_dec_row(seed: int, std: float):
    """A hook: BERT word embeddings [V, D] -> [V + 1, D], the last row N(0, std^2) from `seed`."""

    def hook(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        row = np.random.default_rng([seed, 0]).normal(0.0, std, (DEC_ROWS, x.shape[1]))
        return np.concatenate([x, row.astype(x.dtype)]).reshape(shape)

    hook.adds_dec_row, hook.seed = True, seed  # read by the provenance summary
    return hook


def dec_row_check(source: tuple[int, ...], target: tuple[int, ...]) -> str | None:
    """The check of `with_dec_row`: BERT's table is exactly the [DEC] row short."""
    if len(source) != 2 or (source[0] + DEC_ROWS, source[1]) != tuple(target):
        return (
            f"needs [{target[0] - DEC_ROWS}, {target[1]}]: BERT's vocabulary, to which the [DEC] "
            "row is added"
        )
    return None


def _weight_or_gamma(src: str, dst: str) -> list[Rule]:
    return [
        Rule(rf"{src}\.(weight|gamma)", f"{dst}/scale"),
        Rule(rf"{src}\.(bias|beta)", f"{dst}/bias"),
    ]


def bert_text_rules(seed: int, std: float) -> list[Rule]:
    """The Q-Former's text side from a BERT (keys under `bert.`)."""
    layer = r"bert\.encoder\.layer\.(?P<layer>\d+)"
    dst = "qformer/groups_{group}/layer_{sub}/ffn_text"
    return [
        Rule(
            r"bert\.embeddings\.word_embeddings\.weight",
            "qformer/word_embeddings/embedding",
            with_dec_row(seed, std),
            dec_row_check,
        ),
        Rule(
            r"bert\.embeddings\.position_embeddings\.weight",
            "qformer/position_embeddings/embedding",
        ),
        *dense(rf"{layer}\.intermediate\.dense", f"{dst}/intermediate"),
        *dense(rf"{layer}\.output\.dense", f"{dst}/output"),
        *_weight_or_gamma(rf"{layer}\.output\.LayerNorm", f"{dst}/output_layernorm"),
    ]


# BERT tensors BLIP-2 supersedes (its own trained copies) or InstructBLIP does not have.
BERT_SUPERSEDED: list[str] = [
    r"bert\.embeddings\.(LayerNorm|token_type_embeddings)\..*",
    r"bert\.embeddings\.position_ids",
    r"bert\.encoder\.layer\.\d+\.attention\..*",
    r"bert\.pooler\..*",
    r"bert\.cls\..*",
]


def hf_blip2_rules() -> list[Rule]:
    """HF `Blip2ForConditionalGeneration` (T5): the Q-Former's LayerNorm is `qformer.layernorm`."""
    return [
        Rule(r"query_tokens", "qformer/query_tokens", source_shape=rules.leading_one),
        *rules.vision_hf_rules(),
        *norm(r"qformer\.layernorm", "qformer/embeddings_layernorm"),
        *rules.qformer_rules("qformer", "attention"),
        *dense(r"language_projection", "language_projection"),
        *rules.t5_rules("language_model"),
    ]


HF_ALIASES = rules.HF_ALIASES

# LAVIS stage 1 (`blip2_qformer`, blip2_pretrained.pth): the contrastive/matching heads and the
# Q-Former's LM head train the Q-Former; InstructBLIP has none of them.
STAGE1_UNUSED: list[str] = [
    *rules.LAVIS_UNUSED,
    r"vision_proj\..*",
    r"text_proj\..*",
    r"itm_head\..*",
    r"temp",
]


def lavis_stage2_rules() -> list[Rule]:
    """LAVIS `blip2_t5` (stage 2): as InstructBLIP's LAVIS names, without the text side."""
    return [*rules.lavis_image_rules(r"t5_proj"), *rules.t5_rules("t5_model")]


def lavis_stage1_rules(language_model: list[Rule]) -> list[Rule]:
    """LAVIS stage 1 + a separate language model (its family's `LAVIS_LM_RULES`); the projection
    is freshly drawn."""
    return [*rules.lavis_image_rules(FRESH_PROJECTION.replace(".", r"\.")), *language_model]
