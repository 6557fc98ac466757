"""The text conventions a language-model family was trained with (its tokenizer's layout).

Declared per family in the LM registry (ib_jax/models/families.py) and applied by the data
pipeline's tokenizer (data_pipelines/text.py); it lives here, beside the models, so that the
registry needs nothing from the data package.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class TextFormat:
    """How a language-model family lays out its text; each family declares one in the LM registry
    (ib_jax/models/families.py). The defaults are T5's (HF `T5Tokenizer`).

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
