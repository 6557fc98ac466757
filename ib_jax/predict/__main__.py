"""`python -m ib_jax.predict --checkpoint=DIR --input=PATH --out=FILE.jsonl`: batch inference.

    --checkpoint   a training workdir (latest step) or WORKDIR/checkpoints/STEP, a directory
                   written by `ib_jax.convert`, or a Hugging Face InstructBLIP directory
    --input        anything the `user` format reads (JSON Lines, JSON, CSV/TSV, Parquet, HF
                   save_to_disk or imagefolder folders, "+"-joined), or a folder of images
    --prompt       the instruction of rows that have none (a folder of images), or a format with
                   slots such as "Question: {question} Answer:"
    --candidates   a,b,c: rank these by likelihood instead of generating (scores per candidate)

Decoding: --num_beams, --max_new_tokens, --min_new_tokens, --length_penalty,
--repetition_penalty, --do_sample (--top_p, --temperature, --seed). One output row per input row
in input order (ib_jax/predict/job.py); multi-host as the eval job (`ib_jax.distributed`).
Library logs go to <out's folder>/logs/predict.log.
"""

from __future__ import annotations

import os

import jax
import ml_collections
from absl import app, flags

from ib_jax import distributed
from ib_jax.contract import cli
from ib_jax.predict import Decoding, job

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "workdir, step dir, converted or HF dir")
_INPUT = flags.DEFINE_string("input", None, "rows to predict (see the module docstring)")
_OUT = flags.DEFINE_string("out", None, "output JSON Lines file (one row per input row)")
_PROMPT = flags.DEFINE_string("prompt", "", "instruction for rows without one, or a slot format")
_CANDIDATES = flags.DEFINE_list("candidates", [], "rank these answers instead of generating")
_IMAGES = flags.DEFINE_string("images", None, "folder relative image paths are joined to")
_COLUMNS = flags.DEFINE_string("columns", None, "field:column|field:column for your columns")
_BATCH = flags.DEFINE_integer("batch_size", 8, "global examples per step")
_QFORMER_VOCAB = flags.DEFINE_string("qformer_vocab", "", "Q-Former vocab.txt (default: found)")
_LM_SPM = flags.DEFINE_string("lm_spm", "", "LM SentencePiece model (default: found)")
_QFORMER_LEN = flags.DEFINE_integer("qformer_max_len", 0, "Q-Former tokens (0: the run's, or 128)")
_TEXT_LEN = flags.DEFINE_integer("text_max_len", 0, "LM instruction tokens (0: the run's, or 128)")
_MAX_BAD = flags.DEFINE_float("max_bad_fraction", 1.0, "stop past this share of unreadable images")
_BEAMS = flags.DEFINE_integer("num_beams", 5, "beam width (1: greedy)")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 30, "tokens generated at most")
_MIN_NEW = flags.DEFINE_integer("min_new_tokens", 1, "tokens generated at least")
_LENGTH_PENALTY = flags.DEFINE_float("length_penalty", 1.0, "beam score / length**penalty")
_REPETITION = flags.DEFINE_float("repetition_penalty", 1.0, "HF repetition penalty")
_SAMPLE = flags.DEFINE_bool("do_sample", False, "sample instead of beam search")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "nucleus sampling mass")
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "sampling temperature")
_SEED = flags.DEFINE_integer("seed", 0, "sampling seed")
flags.mark_flags_as_required(["checkpoint", "input", "out"])


def main(argv: list[str]) -> None:
    """Parse the flags, join the process group, predict, write --out."""
    del argv
    cli.quiet_console()
    distributed.initialize(ml_collections.ConfigDict())
    folder = os.path.dirname(os.path.abspath(_OUT.value)) if "://" not in _OUT.value else _OUT.value
    cli.log_to_file(folder, "predict", jax.process_index(), jax.process_count())
    decoding = Decoding(
        max_new_tokens=_MAX_NEW.value,
        min_new_tokens=_MIN_NEW.value,
        num_beams=_BEAMS.value,
        length_penalty=_LENGTH_PENALTY.value,
        repetition_penalty=_REPETITION.value,
        do_sample=_SAMPLE.value,
        top_p=_TOP_P.value,
        temperature=_TEMPERATURE.value,
        seed=_SEED.value,
    )
    rows = job.run(
        _CHECKPOINT.value,
        _INPUT.value,
        _OUT.value,
        prompt=_PROMPT.value,
        candidates=_CANDIDATES.value,
        decoding=decoding,
        batch_size=_BATCH.value,
        images=_IMAGES.value,
        columns=_COLUMNS.value,
        qformer_vocab=_QFORMER_VOCAB.value,
        lm_spm=_LM_SPM.value,
        qformer_max_len=_QFORMER_LEN.value,
        text_max_len=_TEXT_LEN.value,
        max_bad_fraction=_MAX_BAD.value,
    )
    errors = sum(1 for r in rows if r.get("error"))
    print(f"{len(rows)} rows -> {_OUT.value} ({errors} with an unreadable or missing image)")


if __name__ == "__main__":
    app.run(cli.guarded("predict", main))
