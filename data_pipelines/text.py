"""Tokenizers for the two text streams of a batch, with fixed padded shapes.

- Q-Former: BERT WordPiece (lowercased, `tokenizers` library) from a `vocab.txt`, plus "[DEC]"
  as an added special token when the vocab lacks it (LAVIS `init_tokenizer`, HF
  `InstructBlipProcessor.qformer_tokenizer`). `[CLS] instruction [SEP]`, truncated from the LEFT so
  the end of the instruction (where the question is) survives, right-padded with [PAD]=0.
- LM: SentencePiece with T5 conventions (pad=0, eos=1, unk=2). Instruction ids + `</s>` truncated
  from the LEFT; target ids + `</s>` truncated from the RIGHT; labels are -100 at pads.

The ids equal HF's `BertTokenizerFast(vocab, truncation_side="left")` and `T5Tokenizer(spm)`
(tests/test_data_text.py).
"""

from __future__ import annotations

import numpy as np
import sentencepiece as spm
from tokenizers import Tokenizer
from tokenizers.implementations import BertWordPieceTokenizer

IGNORE_ID = -100
DEC_TOKEN = "[DEC]"


class QFormerTokenizer:
    """BERT WordPiece for the Q-Former instruction input."""

    def __init__(self, vocab_path: str):
        try:
            tokenizer = BertWordPieceTokenizer(vocab_path, lowercase=True)
        except Exception as error:  # tokenizers raises plain Exception on a missing/bad file
            raise ValueError(
                f"cannot read Q-Former WordPiece vocab {vocab_path!r}: {error}"
            ) from error
        if tokenizer.token_to_id(DEC_TOKEN) is None:
            tokenizer.add_special_tokens([DEC_TOKEN])
        self._tokenizer: Tokenizer = tokenizer._tokenizer  # the underlying `tokenizers.Tokenizer`
        self.pad_id = self._tokenizer.token_to_id("[PAD]")
        if self.pad_id is None:
            raise ValueError(f"Q-Former vocab {vocab_path!r} has no [PAD] token")
        self.vocab_size = self._tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, texts: list[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """texts -> (ids int32 [N, max_len], mask int32 [N, max_len])."""
        self._tokenizer.enable_truncation(max_len, direction="left")
        self._tokenizer.enable_padding(length=max_len, pad_id=self.pad_id, pad_token="[PAD]")
        encodings = self._tokenizer.encode_batch(texts)
        ids = np.asarray([e.ids for e in encodings], dtype=np.int32).reshape(len(texts), max_len)
        mask = np.asarray([e.attention_mask for e in encodings], dtype=np.int32).reshape(
            len(texts), max_len
        )
        return ids, mask


class LMTokenizer:
    """SentencePiece (T5 conventions) for the LM instruction and target."""

    def __init__(self, model_path: str):
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.Load(model_path)
        except (OSError, RuntimeError) as error:
            raise ValueError(f"cannot read SentencePiece model {model_path!r}: {error}") from error
        self.pad_id, self.eos_id = self._sp.pad_id(), self._sp.eos_id()
        if self.pad_id != 0 or self.eos_id != 1:
            raise ValueError(
                f"SentencePiece model {model_path!r} has pad={self.pad_id}, eos={self.eos_id};"
                " T5 conventions need pad=0, eos=1"
            )
        self.vocab_size = self._sp.GetPieceSize()

    def ids(self, text: str) -> list[int]:
        return self._sp.EncodeAsIds(text)

    def decode(self, ids) -> str:
        return self._sp.DecodeIds(
            [
                int(i)
                for i in ids
                if int(i) not in (self.pad_id, IGNORE_ID) and int(i) != self.eos_id
            ]
        )

    def _pad(self, ids: list[int], max_len: int, pad: int) -> np.ndarray:
        return np.asarray(ids + [pad] * (max_len - len(ids)), dtype=np.int32)

    def encode_instruction(self, text: str, max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """-> (input_ids [max_len], attention_mask [max_len]); ids + </s>, left-truncated."""
        body = self.ids(text)
        body = body[len(body) - (max_len - 1) :] if len(body) > max_len - 1 else body
        ids = body + [self.eos_id]
        mask = np.zeros(max_len, np.int32)
        mask[: len(ids)] = 1
        return self._pad(ids, max_len, self.pad_id), mask

    def encode_target(self, text: str, max_len: int) -> np.ndarray:
        """-> labels [max_len]: ids + </s>, right-truncated, -100 at pads."""
        ids = self.ids(text)[: max_len - 1] + [self.eos_id]
        return self._pad(ids, max_len, IGNORE_ID)
