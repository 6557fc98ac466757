"""`python -m ib_jax.predict`: one output row per input row, written once, in the input's order.

The input is anything the `user` format reads (data_pipelines/formats/user.py: JSON Lines, JSON,
CSV/TSV, Parquet, save_to_disk folders, imagefolders, "+"-joined) or a folder of images with one
`--prompt`. It runs as the eval job does (ib_jax/eval): the checkpoint's parameters restored onto
the mesh (a training run's workdir or step, a converted directory or an HF directory:
`ib_jax.eval.loading`), every process reading its share of the rows in padded batches
(`data_pipelines.eval_pipeline`), the eval job's jitted generation or ranking, then the rows
gathered in input order (`ib_jax.eval.runner`) and written by process 0. A row whose image is
missing or unreadable is written with its `error` (its output is what the model says on a blank
image); a row that cannot be read at all is reported by file and row number.

Output rows: `id`, `image` (its path, or the embedded image's name), `prompt` (as filled), `output`
(text, or the best candidate), `scores` ({candidate: log-likelihood}, rank mode), `reference`
(the row's answers, when it has them), `error`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
from etils import epath
from tqdm import tqdm

from data_pipelines import eval_pipeline, sources, text, user_data
from ib_jax import checkpoint as checkpoint_lib
from ib_jax import decode
from ib_jax.contract.config import Evaluation
from ib_jax.contract.text import text_format
from ib_jax.eval import evaluators, hosts, loading, runner
from ib_jax.eval import program as program_lib
from ib_jax.predict import Decoding, default_lengths, tokenizer_files

logger = logging.getLogger(__name__)
NAME = "predictions"  # the dataset name of the input (never one of the registry's)
DATA_PARALLEL = {"shape": {"data": -1, "fsdp": 1, "tensor": 1}, "axis_rules": []}


@dataclasses.dataclass(frozen=True)
class Source:
    """Where a checkpoint's parameters, tokenizers and text lengths come from."""

    workdir: str  # a training run ("" for a directory)
    step: int | str | None  # a step of the run, or the converted / HF directory
    qformer_vocab: str | None
    lm_spm: str | None
    lengths: dict[str, int]  # qformer_max_len, text_max_len (the run's, if a run)
    mesh: Any = None  # the run's mesh section, if a run


def resolve_checkpoint(path: str) -> Source:
    """A training workdir (its latest step), WORKDIR/checkpoints/STEP, a converted directory or
    an HF InstructBLIP directory (tokenizer files inside it)."""
    run = checkpoint_lib.training_run(path)
    if run is None:
        vocab, spm = tokenizer_files(path)
        return Source("", path, vocab, spm, {})
    workdir, step = run
    if step is None:
        steps = checkpoint_lib.finalized_steps(workdir)
        if not steps:
            raise FileNotFoundError(f"--checkpoint={path}: no finished step in checkpoints/")
        step = steps[-1]
    saved = loading._saved_run_config(workdir, step) or {}  # the run's tokenizers and lengths
    data = saved.get("data") or {}
    lengths = {k: int(data[k]) for k in ("qformer_max_len", "text_max_len") if data.get(k)}
    return Source(
        workdir, step, data.get("qformer_vocab"), data.get("lm_spm"), lengths, saved.get("mesh")
    )


class _Generate(evaluators.GenerateEvaluator):
    """The eval job's generation, with sampling settings too."""

    def __init__(self, settings: Evaluation, tokenizer: Any, decoding: Decoding):
        super().__init__(settings, tokenizer)
        self.decoding = decoding

    def predict(self, program, batch, rows, width):
        """Decoded text per row ({"prediction", "nonfinite"})."""
        tokens, nonfinite = program.generate(batch, **self.decoding.generate_kwargs())
        eos = program.model.config.text.eos_token_id
        texts = decode.decode_text(tokens[rows], self.tokenizer, eos)
        return [{"prediction": t, "nonfinite": bool(nonfinite[i])} for t, i in zip(texts, rows)]


def data_config(
    entry: dict[str, Any], model_config: Any, source: Source, batch_size: int, **lengths: int
) -> dict[str, Any]:
    """The eval pipeline's data config for the input `entry`."""
    if not source.qformer_vocab or not source.lm_spm:
        raise FileNotFoundError(
            f"no tokenizer files for {source.step!r}: give --qformer_vocab and --lm_spm (an HF "
            "directory has qformer_tokenizer/vocab.txt and spiece.model or tokenizer.model)"
        )
    return dict(
        eval_datasets=[entry],
        image_size=int(model_config.vision.image_size),
        **default_lengths(
            model_config,
            lengths.get("qformer_max_len") or source.lengths.get("qformer_max_len", 0),
            lengths.get("text_max_len") or source.lengths.get("text_max_len", 0),
        ),
        target_max_len=8,
        qformer_vocab=source.qformer_vocab,
        lm_spm=source.lm_spm,
        lm_type=model_config.lm_type,
        global_batch_size=batch_size,
        eval_batch_size=batch_size,
        max_bad_fraction=lengths.get("max_bad_fraction", 1.0),
    )


def _row(record: dict[str, Any], source_record: dict[str, Any], rank: bool) -> dict[str, Any]:
    """One output line from a runner record and the input record it came from."""
    image = (
        source_record.get("image")
        or source_record.get("image_path")
        or source_record.get("video")
        or source_record.get("frames")
    )
    row = {
        "id": record["id"],
        "image": image,
        "prompt": record.get("instruction"),
        "output": record["prediction"],
    }
    if rank and record.get("scores") is not None:
        row["scores"] = dict(zip(source_record.get("_candidates", []), record["scores"]))
    if record.get("reference") not in (None, []):
        row["reference"] = record["reference"]
    for key in ("error", "nonfinite"):
        if record.get(key):
            row[key] = record[key]
    return row


def load(checkpoint: str, qformer_vocab: str = "", lm_spm: str = "") -> tuple[Source, Any]:
    """(where its tokenizers and lengths are, the InferenceProgram) of `checkpoint`, on the run's
    mesh, else data parallel over every device of every process."""
    source = resolve_checkpoint(checkpoint)
    source = dataclasses.replace(
        source, qformer_vocab=qformer_vocab or source.qformer_vocab, lm_spm=lm_spm or source.lm_spm
    )
    config = ml_collections.ConfigDict({"mesh": source.mesh or DATA_PARALLEL})
    return source, loading.load(config, source.workdir, source.step).program


def run(
    checkpoint: str,
    input_path: str,
    out: str,
    *,
    prompt: str = "",
    candidates: Sequence[str] = (),
    decoding: Decoding = Decoding(),
    batch_size: int = 8,
    images: str | None = None,
    columns: str | None = None,
    qformer_vocab: str = "",
    lm_spm: str = "",
    progress: bool = True,
    loaded: tuple[Source, Any] | None = None,
    on_batch: Callable[[int], None] | None = None,
    **lengths: Any,
) -> list[dict[str, Any]]:
    """Predict every row of `input_path` with `checkpoint`; write `out` (JSON Lines) from process
    0 and return the rows (on every process). `prompt`: the instruction of rows without one, or
    a format with slots ({instruction}, {question}, {options}...; eval_pipeline.PROMPT_SLOTS).
    `loaded`: `load(checkpoint)`'s result, to predict several inputs with one model on the
    devices; `on_batch(n)`: called after each batch with its number of rows."""
    source, program = loaded or load(checkpoint, qformer_vocab, lm_spm)
    program_lib.check_batch(batch_size, program.mesh)
    slotted = "{" in prompt
    options: dict[str, Any] = dict(require_answer=False, images=images, columns=columns)
    if prompt and not slotted:
        options["default_instruction"] = prompt
    entry = user_data.entry(NAME, input_path, "predict", **options)
    data = data_config(entry, program.model.config, source, batch_size, **lengths)
    records = sources.load_records(entry, float(data["max_bad_fraction"]))
    rank = bool(candidates)
    settings = Evaluation(
        name=NAME,
        mode="rank" if rank else "generate",
        metric="exact_match",
        prompt=prompt if slotted else eval_pipeline.DEFAULT_PROMPT,
        candidates=tuple(candidates),
        **(dict(num_beams=decoding.num_beams) if not rank else {}),
    )
    tokenizer = text.LMTokenizer(str(data["lm_spm"]), text_format(data["lm_type"]))
    tokenizer.check_model(program.model.config.text)
    evaluator = (
        evaluators.make_evaluator(settings, tokenizer)
        if rank
        else _Generate(settings, tokenizer, decoding)
    )
    process, count = jax.process_index(), jax.process_count()
    with tqdm(
        total=len(range(process, len(records), count)),
        desc="predict",
        unit="ex",
        disable=process != 0 or not progress,
    ) as bar:
        batches = eval_pipeline.build_eval_dataset(
            data,
            NAME,
            "predict",
            process_index=process,
            process_count=count,
            prompt=settings.prompt,
        )
        update = bar.update if on_batch is None else lambda n: (bar.update(n), on_batch(n))
        local = runner.predict_records(evaluator, program, batches, update)
    gathered = sorted(
        (r for part in hosts.allgather_json(local) for r in part), key=lambda r: r["index"]
    )
    rows = []
    for record in gathered:
        source_record = dict(records[record["index"]], _candidates=list(candidates))
        rows.append(_row(record, source_record, rank))
    if process == 0:
        path = epath.Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        errors = sum(1 for r in rows if r.get("error"))
        logger.info("%d rows -> %s (%d with an unreadable image)", len(rows), out, errors)
    return rows
