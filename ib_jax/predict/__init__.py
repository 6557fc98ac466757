"""Run a model on your own images: `ib_jax.predict(model, params, images, prompts)` in Python,
`python -m ib_jax.predict` on files (ib_jax/predict/job.py, ib_jax/predict/__main__.py).

`Predictor` holds a model's parameters on a mesh (one device by default) and the two tokenizers;
calling it preprocesses the images as the eval pipeline does (RGB, bicubic resize, CLIP
normalization), tokenizes each prompt for the Q-Former (WordPiece) and the LM (SentencePiece, laid
out per the LM family's text format) and runs the eval job's jitted steps
(`ib_jax.eval.program.InferenceProgram`): beam search, greedy or sampling, or candidate ranking.
Batches have a fixed size (the last one padded), so one compiled step serves every batch.

Tokenizer files: `tokenizer_files(directory)` finds them in a Hugging Face InstructBLIP directory
(`qformer_tokenizer/vocab.txt`, `spiece.model` or `tokenizer.model`); give `qformer_vocab=` /
`lm_spm=` otherwise.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import types
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from data_pipelines import images as images_lib
from data_pipelines import text
from ib_jax import decode
from ib_jax.contract.text import text_format
from ib_jax.eval import program as program_lib
from ib_jax.eval import ranking

QFORMER_VOCABS = ("qformer_tokenizer/vocab.txt", "qformer_vocab.txt")
LM_SPMS = ("spiece.model", "tokenizer.model")


def tokenizer_files(directory: str) -> tuple[str | None, str | None]:
    """(Q-Former WordPiece vocab, LM SentencePiece model) inside a checkpoint directory, each
    None when absent (the HF InstructBLIP layout: qformer_tokenizer/vocab.txt, spiece.model for
    FlanT5 or tokenizer.model for Vicuna)."""

    def first(names: Sequence[str]) -> str | None:
        return next(
            (
                os.path.join(directory, n)
                for n in names
                if os.path.isfile(os.path.join(directory, n))
            ),
            None,
        )

    return first(QFORMER_VOCABS), first(LM_SPMS)


@dataclasses.dataclass(frozen=True)
class Decoding:
    """Generation settings (`ib_jax.decode`): beam search by default; `do_sample` samples."""

    max_new_tokens: int = 30
    min_new_tokens: int = 1
    num_beams: int = 5
    length_penalty: float = 1.0
    repetition_penalty: float = 1.0
    do_sample: bool = False
    top_p: float = 1.0
    temperature: float = 1.0
    seed: int = 0

    def generate_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of `InferenceProgram.generate`."""
        return dataclasses.asdict(self)


def default_lengths(model_config: Any, qformer_max_len: int = 0, text_max_len: int = 0) -> dict:
    """Token lengths of the instruction: those given, else 128 each (LAVIS's max_txt_len), cut
    to what the model's position tables hold (the Q-Former's text positions; a decoder-only
    LM's positions after the query tokens and a few generated tokens)."""
    qformer = qformer_max_len or min(128, int(model_config.qformer.max_position_embeddings))
    room = getattr(model_config.text, "max_position_embeddings", None)
    text_len = text_max_len or 128
    if not text_max_len and room:
        text_len = min(text_len, int(room) - int(model_config.num_query_tokens) - 32)
    return {"qformer_max_len": int(qformer), "text_max_len": int(text_len)}


def place_program(model: Any, params: Any, mesh: Any = None, rules: tuple = ()) -> Any:
    """An InferenceProgram with host or device `params` placed on `mesh` (default: one device)."""
    if mesh is None:
        import ml_collections

        mesh, rules = program_lib.eval_mesh(ml_collections.ConfigDict())
    abstract = program_lib.abstract_params(model, mesh, rules)
    return program_lib.InferenceProgram(model, program_lib.place(params, abstract), mesh, rules)


class Predictor:
    """A model on a mesh with its tokenizers: `predictor(images, prompts)` -> output texts."""

    def __init__(
        self,
        model: Any,
        params: Any,
        *,
        qformer_vocab: str,
        lm_spm: str,
        qformer_max_len: int = 0,
        text_max_len: int = 0,
        batch_size: int = 8,
        program: Any = None,
    ):
        self.program = program or place_program(model, params)
        self.model = self.program.model
        self.image_size = int(self.model.config.vision.image_size)
        self.qformer = text.QFormerTokenizer(qformer_vocab)
        self.lm = text.LMTokenizer(lm_spm, text_format(self.model.config.lm_type))
        self.lm.check_model(self.model.config.text)
        lengths = default_lengths(self.model.config, qformer_max_len, text_max_len)
        self.qformer_max_len, self.text_max_len = (
            lengths["qformer_max_len"],
            lengths["text_max_len"],
        )
        self.batch_size = int(batch_size)

    def pixels(self, image: Image.Image | str | os.PathLike) -> np.ndarray:
        """One image (PIL, or a path; a bucket path through etils.epath) -> [H, W, 3] float32."""
        if not isinstance(image, Image.Image):
            image = images_lib.load_image(os.fspath(image))
        return images_lib.preprocess_image(images_lib.to_rgb(image), self.image_size, None)

    def inputs(self, pixels: np.ndarray, prompts: Sequence[str]) -> dict[str, np.ndarray]:
        """pixels [B, H, W, 3] and B prompts -> the model inputs of the batch contract."""
        q_ids, q_mask = self.qformer.encode(list(prompts), self.qformer_max_len)
        lm = [self.lm.encode_instruction(p, self.text_max_len) for p in prompts]
        return {
            "pixel_values": np.asarray(pixels, np.float32),
            "qformer_input_ids": q_ids,
            "qformer_attention_mask": q_mask,
            "input_ids": np.stack([ids for ids, _ in lm]),
            "attention_mask": np.stack([mask for _, mask in lm]),
        }

    def _batches(self, pixels: list[np.ndarray], prompts: list[str]):
        """(inputs of batch_size rows, number of real rows) per batch; the last one is padded
        with copies of its first row, so every batch has the compiled shape."""
        for start in range(0, len(prompts), self.batch_size):
            part_pixels = pixels[start : start + self.batch_size]
            part_prompts = prompts[start : start + self.batch_size]
            real = len(part_prompts)
            pad = self.batch_size - real
            yield (
                self.inputs(
                    np.stack(part_pixels + part_pixels[:1] * pad),
                    part_prompts + part_prompts[:1] * pad,
                ),
                real,
            )

    def __call__(
        self,
        images: Sequence[Image.Image | str | os.PathLike],
        prompts: str | Sequence[str],
        *,
        candidates: Sequence[str] | None = None,
        decoding: Decoding = Decoding(),
        candidate_max_len: int = 16,
        length_normalize: bool = False,
    ) -> list[str] | list[dict[str, Any]]:
        """Output text per image; with `candidates`, per image {"output": the best candidate,
        "scores": {candidate: log-likelihood}} (the eval job's ranking)."""
        prompts = [prompts] * len(images) if isinstance(prompts, str) else list(prompts)
        if len(prompts) != len(images):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        pixels = [self.pixels(image) for image in images]
        outputs: list[Any] = []
        eos = self.model.config.text.eos_token_id
        for batch, real in self._batches(pixels, prompts):
            if candidates:
                labels = ranking.candidate_labels(
                    [list(candidates)] * self.batch_size, self.lm, candidate_max_len
                )
                scores, _ = self.program.rank(batch, labels, length_normalize=length_normalize)
                for row in scores[:real]:
                    best = int(np.argmax(row[: len(candidates)]))
                    outputs.append(
                        {
                            "output": candidates[best],
                            "scores": {c: float(s) for c, s in zip(candidates, row)},
                        }
                    )
            else:
                tokens, _ = self.program.generate(batch, **decoding.generate_kwargs())
                outputs.extend(decode.decode_text(tokens[:real], self.lm, eos))
        return outputs


def predict(
    model: Any,
    params: Any,
    images: Sequence[Image.Image | str | os.PathLike],
    prompts: str | Sequence[str],
    *,
    qformer_vocab: str,
    lm_spm: str,
    candidates: Sequence[str] | None = None,
    batch_size: int = 8,
    qformer_max_len: int = 0,
    text_max_len: int = 0,
    **decoding: Any,
) -> list[str] | list[dict[str, Any]]:
    """Run `model` with `params` (e.g. from `ib_jax.load_pretrained`) on `images` (PIL images or
    paths) with `prompts` (one per image, or one for all): the output text per image, or with
    `candidates` the best candidate and every candidate's score. `decoding`: `Decoding` fields
    (num_beams=5, max_new_tokens=30, length_penalty, do_sample, top_p, temperature, seed...).
    For many calls on one model, build a `Predictor` once (parameters are placed and the steps
    compiled once)."""
    predictor = Predictor(
        model,
        params,
        qformer_vocab=qformer_vocab,
        lm_spm=lm_spm,
        qformer_max_len=qformer_max_len,
        text_max_len=text_max_len,
        batch_size=min(batch_size, max(len(images), 1)),
    )
    return predictor(images, prompts, candidates=candidates, decoding=Decoding(**decoding))


__all__ = [
    *("Decoding", "Predictor", "default_lengths", "place_program", "predict", "tokenizer_files")
]


class _CallableModule(types.ModuleType):
    """`ib_jax.predict(...)` must call `predict` even after `import ib_jax.predict` has bound the
    package attribute to this module (Python sets it on import, replacing ib_jax's function)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return predict(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
