"""Evaluation throughput (examples/s) at the held-out settings: the eval job's jitted steps beside
the reference's per-batch loop, on the benchmark configuration (benchmarks/run.py).

  python -m benchmarks.eval_throughput --threads=1 --json=/tmp/eval.json   # a few minutes
  python -m benchmarks.eval_throughput --tiny                                # seconds

Settings (the zero-shot held-out ones, data_pipelines/registry.py and configs/eval_heldout.py):
  qa        5 beams, 1-10 new tokens, length penalty -1 (VQA-style short answers)
  captions  5 beams, 10-80 new tokens, length penalty 1 (NoCaps / Flickr30K)
  rank2     2 candidates of <= 4 tokens (HatefulMemes' "yes" / "no")
  rank100   100 candidates of <= 16 tokens, 20 per decoder pass (Visual Dialog)
Ours: `ib_jax.eval.program.InferenceProgram` on one device, i.e. the eval job's own step (jitted
with explicit shardings; a host batch in, host tokens or scores out). Reference: HF
`InstructBlipForConditionalGeneration.generate` per batch; for ranking LAVIS's loop as
`benchmarks.reference.score_candidates` runs it (image and instruction encoded once, the
candidates teacher-forced chunk by chunk). Same weights (fan-in init, `save_pretrained`, converted
with `ib_jax.load_pretrained`), same batches, fp32, same threads (`benchmarks.run.pin_threads`);
the two sides alternate call by call and the table shows medians. Both sides must agree (tokens
equal, candidate scores close), so both stop generating at the same step.

The "1 new token" rows time the floor under every generation (image encoder, Q-Former, T5
encoder and one decoder step: the same matmuls on both sides), to say where the time goes when
a setting misses the 2x target.
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from absl import app, flags

import ib_jax
from benchmarks import common, reference, run_sections
from benchmarks import run as bench
from ib_jax.eval import program as program_lib
from ib_jax.models.instructblip import InstructBlip

TARGET = 2.0  # our examples/s over the reference's, at every setting
GENERATE = {
    "qa": dict(num_beams=5, min_new_tokens=1, max_new_tokens=10, length_penalty=-1.0),
    "captions": dict(num_beams=5, min_new_tokens=10, max_new_tokens=80, length_penalty=1.0),
    "qa_1_token": dict(num_beams=5, min_new_tokens=1, max_new_tokens=1, length_penalty=-1.0),
}
RANK = {
    "rank2": dict(candidates=2, length=4, chunk=0),
    "rank100": dict(candidates=100, length=16, chunk=20),
}


def tiny_settings() -> tuple[dict, dict]:
    """Short versions for the tiny model (tests): the same code paths, seconds."""
    generate = {
        "qa": dict(GENERATE["qa"], num_beams=2, max_new_tokens=4),
        "captions": dict(GENERATE["captions"], num_beams=2, min_new_tokens=2, max_new_tokens=6),
        "qa_1_token": dict(GENERATE["qa_1_token"], num_beams=2),
    }
    rank = {"rank2": RANK["rank2"], "rank100": dict(candidates=8, length=5, chunk=4)}
    return generate, rank


def _ours(model, params) -> Any:
    """The eval job's program on one device (a config without a mesh), parameters placed as the
    job places them."""
    import ml_collections

    mesh, rules = program_lib.eval_mesh(ml_collections.ConfigDict({"eval": {}}))
    abstract = program_lib.abstract_params(model, mesh, rules)
    return program_lib.InferenceProgram(model, program_lib.place(params, abstract), mesh, rules)


def measured_calls(bc: bench.BenchConfig, generate: dict, rank: dict, log) -> tuple[dict, dict]:
    """{setting: (reference fn, our fn, agreement fn)} and facts (batch, model)."""
    import torch

    config = bench.model_config(bc)
    hf_model = reference.build(config, seed=0)
    with tempfile.TemporaryDirectory() as directory:
        hf_model.save_pretrained(directory)
        model, params = ib_jax.load_pretrained(directory)

    model = InstructBlip(program_lib.inference_config(model.config, {}))
    ours = _ours(model, params)
    batch = bench.make_batch(bc)
    del batch["labels"]
    hf_inputs = reference.to_hf(batch, config, labels=False)
    calls: dict[str, tuple[Callable, Callable, Callable]] = {}

    for name, s in generate.items():

        def ref(s=s):
            with torch.no_grad():
                out = hf_model.generate(**hf_inputs, do_sample=False, **s)
            return reference.new_tokens(hf_model, out, 0)

        def our(s=s):
            return ours.generate(batch, **s)[0]

        def agree(r, o):  # HF pads after EOS with its pad id too; compare the common length
            n = min(r.shape[1], o.shape[1])
            return {"tokens_equal": common.fraction_equal(r[:, :n], o[:, :n])}

        calls[name] = (ref, our, agree)

    for name, s in rank.items():
        labels = common.make_candidates(
            bc.batch,
            s["candidates"],
            s["length"],
            max_token=reference.image_token(config),
            eos=config.text.eos_token_id,
        )
        torch_labels = torch.from_numpy(labels.astype(np.int64))

        def ref(s=s, torch_labels=torch_labels):
            with torch.no_grad():
                return reference.score_candidates(hf_model, hf_inputs, torch_labels, s["chunk"])

        def our(s=s, labels=labels):
            return ours.rank(batch, labels, chunk_size=s["chunk"])[0]

        def agree(r, o):
            r = np.asarray(r)
            return {
                "same_best": float(np.mean(r.argmax(-1) == o.argmax(-1))),
                "max_relative_difference": float(
                    np.max(np.abs(r - o) / np.maximum(np.abs(r), 1e-6))
                ),
            }

        calls[name] = (ref, our, agree)
    log(f"model and both sides ready; batch {bc.batch}")
    return calls, {"batch": bc.batch, "model": dataclasses.asdict(config)}


def measure(calls: dict, warmup: int, repeats: int, batch: int, log) -> dict[str, Any]:
    """Per setting: medians of `repeats` calls of each side in alternation after `warmup`,
    examples/s, the ratio and the agreement of the last outputs."""
    rows = {}
    for name, (ref, our, agree) in calls.items():
        start = time.perf_counter()
        our()
        compile_s = time.perf_counter() - start
        for _ in range(warmup):
            ref()
            our()
        times: dict[str, list[float]] = {"reference": [], "ours": []}
        outputs: dict[str, Any] = {}
        for _ in range(repeats):
            for side, fn in (("reference", ref), ("ours", our)):
                start = time.perf_counter()
                outputs[side] = fn()
                times[side].append(time.perf_counter() - start)
        median = {side: statistics.median(ts) for side, ts in times.items()}
        rows[name] = {
            "median_s": median,
            "all_s": {side: [round(t, 4) for t in ts] for side, ts in times.items()},
            "examples_per_s": {side: batch / t for side, t in median.items()},
            "ratio": median["reference"] / median["ours"],
            "our_first_call_s": compile_s,
            "agreement": agree(np.asarray(outputs["reference"]), np.asarray(outputs["ours"])),
        }
        log(
            f"  {name}: reference {median['reference']:.3f} s, ours {median['ours']:.3f} s "
            f"({rows[name]['ratio']:.2f}x) {rows[name]['agreement']}"
        )
    return rows


def table(results: dict[str, Any]) -> str:
    """The markdown table of `run`'s results."""
    lines = [
        "| setting | reference ex/s | ib_jax ex/s | ib_jax / reference | target | met | agreement |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in results["settings"].items():
        floor = name.endswith("1_token")
        met = "" if floor else ("yes" if row["ratio"] >= TARGET else "NO")
        agreement = ", ".join(
            f"{k} {v:.1%}" if k != "max_relative_difference" else f"{k} {v:.1e}"
            for k, v in row["agreement"].items()
        )
        lines.append(
            f"| {name} | {row['examples_per_s']['reference']:.2f} | "
            f"{row['examples_per_s']['ours']:.2f} | {row['ratio']:.2f}x | "
            f"{'' if floor else f'>= {TARGET:.0f}x'} | {met} | {agreement} |"
        )
    settings = results["settings"]
    if "qa" in settings and "qa_1_token" in settings:
        for side in ("reference", "ours"):
            share = settings["qa_1_token"]["median_s"][side] / settings["qa"]["median_s"][side]
            lines.append(f"\n{side}: the 1-token floor is {share:.0%} of a QA batch's time")
    lines.append(f"\nthreads: {results['threads']}; batch {results['batch']}; {results['load']}")
    return "\n".join(lines)


def run(
    bc: bench.BenchConfig, threads: int, tiny: bool, log, only: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Build both sides, measure every setting (or those in `only`); the raw results."""
    generate, rank = tiny_settings() if tiny else (GENERATE, RANK)
    if only:
        generate = {k: v for k, v in generate.items() if k in only}
        rank = {k: v for k, v in rank.items() if k in only}
    calls, facts = measured_calls(bc, generate, rank, log)
    load = run_sections.load_snapshot()
    settings = measure(calls, bc.warmup, bc.repeats, bc.batch, log)
    return {"threads": threads, "settings": settings, "load": load, **facts}


def define_flags() -> None:
    """Flags; defined only when this runs as a program."""
    flags.DEFINE_bool("tiny", False, "tiny model and settings (seconds; what the tests run)")
    flags.DEFINE_integer("threads", 0, "cores for both frameworks (0: all available)")
    flags.DEFINE_integer("repeats", 0, "timed calls per side and setting (0: 3, tiny: 1)")
    flags.DEFINE_list(
        "settings", [], "measure only these (qa, captions, qa_1_token, rank2, rank100)"
    )
    flags.DEFINE_string("json", "", "also write the raw results here")
    flags.DEFINE_string("markdown", "", "also write the table here")


def main(argv: list[str]) -> None:
    """Measure per the flags, print the table."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    FLAGS = flags.FLAGS
    threads = bench.pin_threads(FLAGS.threads)
    bc = bench.tiny() if FLAGS.tiny else bench.BenchConfig()
    bc = dataclasses.replace(bc, warmup=1, repeats=FLAGS.repeats or (1 if FLAGS.tiny else 3))
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    results = run(bc, threads, FLAGS.tiny, log, tuple(FLAGS.settings))
    bench.write_results(table(results), results, FLAGS.json, FLAGS.markdown)


if __name__ == "__main__":
    define_flags()
    app.run(main)
