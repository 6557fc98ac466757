"""The text conventions each language-model family was trained with (its tokenizer's layout).

`TEXT_FORMATS` maps a family name (`config.model.lm_type`) to its `TextFormat`. The LM registry
(ib_jax/models/families.py) takes each family's format from this table and the data pipeline's
tokenizer (data_pipelines/text.py) applies it, so both read one definition and neither imports
the other.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class TextFormat:
    """How a language-model family lays out its text (one per family in `TEXT_FORMATS`). The
    defaults are T5's (HF `T5Tokenizer`).

    bos_piece:       piece put before the instruction, or None (T5). Vicuna: `</s>`, as LAVIS sets
                     `bos_token = "</s>"` on the LLaMA tokenizer.
    instruction_eos: whether `</s>` closes the instruction (T5's encoder input: yes; Vicuna: no,
                     the target follows it in the same sequence).
    pad_piece:       None: the SentencePiece model's own pad piece (T5: id 0). Otherwise a piece
                     added after the model's pieces (Vicuna: "[PAD]" = id 32000, LAVIS
                     `add_special_tokens({"pad_token": "[PAD]"})`).
    keep_target_eos: True: the target is cut to max_len - 1 ids and `</s>` appended, so it always
                     ends the target (HF adds it after truncation). False: LAVIS appends the text
                     "</s>" before truncating, so a target at the limit loses it.
    candidate_eos:   whether ranked candidates end with `</s>` (LAVIS `_predict_class`: T5 yes,
                     Vicuna no).
    """

    bos_piece: str | None = None
    instruction_eos: bool = True
    pad_piece: str | None = None
    keep_target_eos: bool = True
    candidate_eos: bool = True
    eos_piece: str = "</s>"


TEXT_FORMATS: dict[str, TextFormat] = {
    # HF T5Tokenizer: `</s>` closes instruction and target; pad 0.
    "t5": TextFormat(),
    # Vicuna as LAVIS trains it (blip2_vicuna_instruct.py): `</s>` as BOS, the instruction without
    # EOS, the target text + "</s>" truncated together, [PAD] added after the SentencePiece
    # pieces, candidates ranked without `</s>`.
    "llama": TextFormat(
        bos_piece="</s>",
        instruction_eos=False,
        pad_piece="[PAD]",
        keep_target_eos=False,
        candidate_eos=False,
    ),
}


def text_format(lm_type: str) -> TextFormat:
    """The text conventions of the LM family named `lm_type` (`config.model.lm_type`)."""
    if lm_type not in TEXT_FORMATS:
        raise ValueError(
            f"config.model.lm_type must be one of {sorted(TEXT_FORMATS)}, got {lm_type!r}"
        )
    return TEXT_FORMATS[lm_type]
