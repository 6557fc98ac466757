"""Tokenizers for the two text streams of a batch, with fixed padded shapes.

- Q-Former: BERT WordPiece (lowercased, `tokenizers` library) from a `vocab.txt`, plus "[DEC]"
  as an added special token when the vocab lacks it (LAVIS `init_tokenizer`, HF
  `InstructBlipProcessor.qformer_tokenizer`). `[CLS] instruction [SEP]`, truncated from the LEFT so
  the end of the instruction (where the question is) survives, right-padded with [PAD]=0.
- LM: SentencePiece, laid out by the LM family's `TextFormat` (the contract's table,
  ib_jax/contract/text.py). T5: instruction ids + `</s>`, pad 0. Vicuna (LAVIS): `</s>` as BOS
  before the instruction, no EOS after it, `[PAD]` added as the id after the model's pieces.
  Instructions are truncated from the LEFT; targets (ids + `</s>`) from the RIGHT; labels are -100
  at pads.

The ids equal HF's `BertTokenizerFast(vocab, truncation_side="left")`, `T5Tokenizer(spm)` and, with
LAVIS's special tokens, `LlamaTokenizer(spm)` (tests/test_data_text.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import sentencepiece as spm
from tokenizers import Tokenizer
from tokenizers.implementations import BertWordPieceTokenizer

from ib_jax.contract.batch import IGNORE_INDEX
from ib_jax.contract.text import TextFormat

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
    """SentencePiece for the LM instruction, target and ranked candidates, laid out per TextFormat.

    Instruction: `[bos] ids [</s>]`, truncated from the LEFT (the question is at the end), padded
    on the right. Target: ids + `</s>`, truncated from the RIGHT, IGNORE_INDEX at pads. With T5's
    format the ids equal HF `T5Tokenizer`'s; with Vicuna's, HF `LlamaTokenizer`'s as LAVIS
    configures it (tests/test_data_text.py).
    """

    def __init__(self, model_path: str, text_format: TextFormat = TextFormat()):
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.Load(model_path)
        except (OSError, RuntimeError) as error:
            raise ValueError(f"cannot read SentencePiece model {model_path!r}: {error}") from error
        self.model_path, self.format = model_path, text_format
        self.num_pieces = self._sp.GetPieceSize()
        self.eos_id = self._piece_id(text_format.eos_piece)
        self.bos_id = (
            None if text_format.bos_piece is None else self._piece_id(text_format.bos_piece)
        )
        if text_format.pad_piece is None:
            self.pad_id = self._sp.pad_id()
            if self.pad_id < 0:
                raise ValueError(
                    f"SentencePiece model {model_path!r} has no pad piece, and the LM's text"
                    " format adds none"
                )
            self.vocab_size = self.num_pieces
        else:
            self.pad_id, self.vocab_size = self.num_pieces, self.num_pieces + 1

    def _piece_id(self, piece: str) -> int:
        piece_id = self._sp.PieceToId(piece)
        if self._sp.IdToPiece(piece_id) != piece:
            raise ValueError(f"SentencePiece model {self.model_path!r} has no piece {piece!r}")
        return piece_id

    def ids(self, text: str) -> list[int]:
        """The text's SentencePiece ids, without special tokens."""
        return self._sp.EncodeAsIds(text)

    def decode(self, ids) -> str:
        """ids -> text, skipping pads, IGNORE_INDEX, BOS/EOS and ids past the SentencePiece model."""
        skip = {self.pad_id, self.eos_id, self.bos_id, IGNORE_INDEX}
        return self._sp.DecodeIds(
            [int(i) for i in ids if int(i) not in skip and 0 <= int(i) < self.num_pieces]
        )

    def _pad(self, ids: list[int], max_len: int, pad: int) -> np.ndarray:
        return np.asarray(ids + [pad] * (max_len - len(ids)), dtype=np.int32)

    def encode_instruction(self, text: str, max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """-> (input_ids [max_len], attention_mask [max_len]): `[bos] ids [</s>]`, the ids
        left-truncated so the special tokens survive, right-padded with the pad id."""
        prefix = [] if self.bos_id is None else [self.bos_id]
        suffix = [self.eos_id] if self.format.instruction_eos else []
        room = max_len - len(prefix) - len(suffix)
        if room < 0:
            raise ValueError(f"max_len={max_len} leaves no room for the instruction's special ids")
        body = self.ids(text)
        ids = prefix + body[max(len(body) - room, 0) :] + suffix
        mask = np.zeros(max_len, np.int32)
        mask[: len(ids)] = 1
        return self._pad(ids, max_len, self.pad_id), mask

    def encode_target(self, text: str, max_len: int) -> np.ndarray:
        """-> labels [max_len]: ids + `</s>`, right-truncated (see `keep_target_eos`), IGNORE_INDEX
        at pads."""
        if self.format.keep_target_eos:
            ids = self.ids(text)[: max_len - 1] + [self.eos_id]
        else:
            ids = (self.ids(text) + [self.eos_id])[:max_len]
        return self._pad(ids, max_len, IGNORE_INDEX)

    def encode_candidate(self, text: str, max_len: int) -> np.ndarray:
        """-> labels [max_len] of a ranked answer candidate: as a target, without `</s>` where the
        format says so; IGNORE_INDEX at pads."""
        if self.format.candidate_eos:
            return self.encode_target(text, max_len)
        return self._pad(self.ids(text)[:max_len], max_len, IGNORE_INDEX)

    def check_model(self, text_config: Any) -> None:
        """Raise a clear error when these ids disagree with the LM config's (`ModelConfig.text`:
        eos/pad/bos token ids, vocab_size): a mismatch would train or decode silently wrong."""
        expected = {"eos_token_id": self.eos_id, "pad_token_id": self.pad_id}
        if self.bos_id is not None and hasattr(text_config, "bos_token_id"):
            expected["bos_token_id"] = self.bos_id
        for field, ours in expected.items():
            if getattr(text_config, field) != ours:
                raise ValueError(
                    f"LM tokenizer {self.model_path!r} gives {field.replace('_id', '')} id {ours},"
                    f" but the model config's {field} is {getattr(text_config, field)}"
                )
        if self.vocab_size > text_config.vocab_size:
            raise ValueError(
                f"LM tokenizer {self.model_path!r} has {self.vocab_size} ids, more than the model's"
                f" vocab_size {text_config.vocab_size}"
            )
