"""The special-token ids of an HF directory's `config.json` checked against its tokenizer files.

Released InstructBLIP-Vicuna directories carry LLaMA ids in `config.json` (bos 0 / eos 1 / pad -1,
LAVIS issue #509) that are not the ids the model was trained with: LAVIS sets `</s>` (2) as BOS
and EOS and adds `[PAD]` as 32000 (the tokenizer files say so). The ids only mean something
through the tokenizer, so where the tokenizer files name a token and its id, that id is used, and
a disagreement with `config.json` is reported in one message naming both files and both values.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any

logger = logging.getLogger(__name__)

ROLES = ("bos", "eos", "pad")
LAVIS_VICUNA = "LAVIS trains Vicuna with `</s>` = 2 as BOS and EOS and `[PAD]` = 32000"


def _read_json(directory: str, name: str) -> dict[str, Any]:
    path = os.path.join(directory, name)
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            value = json.load(f)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read tokenizer file {path}: {error}") from error
    return value if isinstance(value, dict) else {}


def _content(token: Any) -> str | None:
    if isinstance(token, dict):
        token = token.get("content")
    return token if isinstance(token, str) else None


def token_strings(directory: str) -> dict[str, tuple[str, str]]:
    """role -> (token text, the file naming it), from tokenizer_config.json, else
    special_tokens_map.json."""
    found: dict[str, tuple[str, str]] = {}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        values = _read_json(directory, name)
        for role in ROLES:
            text = _content(values.get(f"{role}_token"))
            if role not in found and text is not None:
                found[role] = (text, name)
    return found


def token_id(directory: str, text: str) -> tuple[int, str] | None:
    """(id, the file giving it) of a token text: added tokens first (tokenizer_config.json's
    added_tokens_decoder, added_tokens.json, tokenizer.json), then the vocabulary (tokenizer.json,
    tokenizer.model); None where no file knows it."""
    config = _read_json(directory, "tokenizer_config.json")
    for key, value in (config.get("added_tokens_decoder") or {}).items():
        if _content(value) == text:
            return int(key), "tokenizer_config.json"
    added = _read_json(directory, "added_tokens.json")
    if isinstance(added.get(text), int):
        return added[text], "added_tokens.json"
    fast = _read_json(directory, "tokenizer.json")
    for entry in fast.get("added_tokens") or []:
        if entry.get("content") == text:
            return int(entry["id"]), "tokenizer.json"
    vocab = (fast.get("model") or {}).get("vocab")
    if isinstance(vocab, dict) and text in vocab:
        return int(vocab[text]), "tokenizer.json"
    if isinstance(vocab, list):
        for index, entry in enumerate(vocab):
            if entry and entry[0] == text:
                return index, "tokenizer.json"
    path = os.path.join(directory, "tokenizer.model")
    if os.path.exists(path):
        import sentencepiece

        try:
            pieces = sentencepiece.SentencePieceProcessor(model_file=path)
        except (OSError, RuntimeError) as error:
            raise ValueError(f"cannot read SentencePiece model {path}: {error}") from error
        piece = pieces.PieceToId(text)
        if pieces.IdToPiece(piece) == text:
            return piece, "tokenizer.model"
    return None


def reconcile(directory: str, text_config: Any) -> tuple[Any, str | None]:
    """`text_config` (our LM config read from `config.json`) with the bos/eos/pad ids the
    tokenizer files give, and the message describing any disagreement (None when they agree or
    the directory has no tokenizer files). Roles the LM config has no field for are skipped."""
    saved = _read_json(directory, "config.json").get("text_config", {})
    changes, lines = {}, []
    for role, (text, source) in token_strings(directory).items():
        field = f"{role}_token_id"
        if not hasattr(text_config, field):
            continue
        resolved = token_id(directory, text)
        if resolved is None or resolved[0] == getattr(text_config, field):
            continue
        ours, id_source = resolved
        changes[field] = ours
        lines.append(
            f"config.json text_config.{field} is {saved.get(field, getattr(text_config, field))}"
            f" but {source} names {role}_token {text!r}, id {ours} in {id_source}"
        )
    if not changes:
        return text_config, None
    message = (
        f"{directory}: the special-token ids of config.json disagree with the tokenizer files: "
        + "; ".join(lines)
        + f". Using the tokenizer's ({', '.join(f'{k}={v}' for k, v in changes.items())}): the"
        f" model was trained with them ({LAVIS_VICUNA})."
    )
    return dataclasses.replace(text_config, **changes), message
