"""One call, the whole table: ib_jax against the PyTorch reference on the accelerator JAX sees.

  python -m benchmarks.accelerator                      # FlanT5-XL on a GPU/TPU; the tiny model on CPU
  python -m benchmarks.accelerator --model=vicuna7b --batch_size=64 --out=/tmp/bench.json
  python -m benchmarks.accelerator --model=tiny         # seconds on CPU (tests/test_benchmarks.py)

Random weights at a released architecture (configs/instructblip_*.py: EVA ViT-g 39 layers at
224 px, BERT-base Q-Former, FlanT5-XL/XXL or Vicuna-7B/13B) in the config's mixed precision
(compute bf16, frozen towers stored bf16, trainable Q-Former fp32), one device. Measured:

- training step: the trainer's own program (ib_jax/train/trainer.py `build_program`,
  `initial_state`, the jitted step of ib_jax/train/step.py: frozen ViT and LM, Q-Former trainable,
  AdamW(0.9, 0.999, wd 0.05)) at the largest batch that fits, starting from --batch_size or the
  paper's batch (192 FlanT5, 128 Vicuna-7B, 64 Vicuna-13B) and halving on out-of-memory: step
  time, examples/s, MFU (analytic FLOPs of ib_jax/train/flops.py / step time / the device's
  published bf16 peak; on CPU a measured XLA fp32 matmul rate), peak device memory
  (`memory_stats()`; compiled `memory_analysis()` where the backend has none);
- zero-shot generation at the held-out settings: short answers (5 beams, 10 new tokens, length
  penalty -1) and captions (5 beams, 80 new tokens), examples/s. min_new_tokens is set to the
  maximum so that both sides decode the same number of steps on random weights;
- candidate ranking (ib_jax.eval.ranking; Visual Dialog's setting: 100 candidates of <= 16 tokens,
  20 per decoder pass), examples/s;
- launch.aot's analytic FLOPs and memory accounting for the same config and batch, beside XLA's
  FLOP count and the measured peak memory;
- the same for the reference (benchmarks/accelerator_reference.py: HF transformers
  `InstructBlipForConditionalGeneration` on the same device, bf16 frozen towers, bf16 autocast,
  torch.compile'd training forward on CUDA) when torch with that device is importable, with the
  ratio ours / reference. On CPU both sides run the tiny model in fp32 on the same weights and the
  table also says whether they agree (step-0 loss within 1e-5 relative, generated tokens >= 99%
  equal, ranking scores within 1e-5 relative).

Time: each side runs in its own process (each gets the whole device's memory). The whole run is
meant to fit 8 minutes on one GPU including compilation (--deadline_s=480): our side gets 60% of
it, the reference the rest. The timed loop of each measurement stops at its budget (BUDGETS_S:
training 30 s, short-answer generation 15 s, captions 25 s, ranking 10 s, after one untimed
compiling call) or after --steps / --calls calls, whichever comes first; a measurement that
would start after its side's share is used up is skipped and listed as such. Results are
written to --out (JSON) and printed as a markdown table.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

from absl import app, flags

from benchmarks import accelerator_common as ac
from benchmarks import accelerator_ours, accelerator_reference, common

FLAGS = flags.FLAGS
BUDGETS_S = {"train": 30.0, "generate_qa": 15.0, "generate_captions": 25.0, "ranking": 10.0}
OURS_SHARE = 0.6  # of --deadline_s
LOSS_TOLERANCE = 1e-5
TOKENS_TOLERANCE = 0.99
SCORES_TOLERANCE = 1e-5
TARGETS = {"train": 1.5, "generate_qa": 3.0, "generate_captions": 3.0}  # ours / reference
MFU_TARGET = 0.40


def define_flags() -> None:
    """The benchmark's flags; defined only when it runs as a program (importing defines none)."""
    flags.DEFINE_enum(
        "model", None, sorted(ac.CONFIGS), "architecture (default: flant5xl; tiny when on CPU)"
    )
    flags.DEFINE_integer(
        "batch_size", 0, "training batch to start the search at (default: the paper's)"
    )
    flags.DEFINE_integer(
        "eval_batch_size",
        0,
        "generation/ranking batch (default: the config's evaluation batch, else 16)",
    )
    flags.DEFINE_integer("steps", 10, "timed training steps (at most; see BUDGETS_S)")
    flags.DEFINE_integer("calls", 3, "timed generation/ranking calls (at most)")
    flags.DEFINE_string("out", "accelerator_results.json", "write the JSON results here")
    flags.DEFINE_bool("reference", True, "also measure the PyTorch reference")
    flags.DEFINE_bool("torch_compile", True, "torch.compile the reference's training (CUDA)")
    flags.DEFINE_string("profile_dir", "", "write a jax.profiler trace of 3 training steps here")
    flags.DEFINE_float("deadline_s", 480.0, "the whole run, both sides, seconds")
    # Internal: how the parent process starts each side.
    flags.DEFINE_enum("side", "both", ["both", "ours", "reference"], "internal: which side")
    flags.DEFINE_string("weights", "", "internal: the shared HF weights directory")
    flags.DEFINE_string("ours_results", "", "internal: our side's JSON, for the reference side")
    flags.DEFINE_float("total_s", 0.0, "internal: this side's share of the deadline")


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _write(path: str, results: dict) -> None:
    with open(path, "w") as f:
        json.dump(results, f, indent=1, default=str)


def _child(side: str, out: str, total_s: float, extra: list[str]) -> dict | None:
    """Run one side as `python -m benchmarks.accelerator --side=...`; its JSON, or None."""
    command = [
        sys.executable,
        "-m",
        "benchmarks.accelerator",
        f"--side={side}",
        f"--out={out}",
        f"--total_s={total_s:.0f}",
        f"--steps={FLAGS.steps}",
        f"--calls={FLAGS.calls}",
        f"--eval_batch_size={FLAGS.eval_batch_size}",
        f"--torch_compile={FLAGS.torch_compile}",
        *extra,
    ]
    _log("$ " + " ".join(command[1:]))
    env = dict(os.environ)
    if side == "ours":
        # The batch search may use nearly all of the device (XLA reserves 75% by default).
        env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.92")
    else:
        env["JAX_PLATFORMS"] = "cpu"  # the reference's process must not take device memory
    try:
        done = subprocess.run(command, env=env, timeout=total_s + 120)
        failed = done.returncode != 0 and f"exit status {done.returncode}"
    except subprocess.TimeoutExpired:
        failed = f"killed after {total_s + 120:.0f} s"
    result = None
    if os.path.exists(out):
        with open(out) as f:
            result = json.load(f)
    if failed:
        _log(f"{side} side: {failed}")
        result = (result or {}) | {"error": failed}
    return result


def run_ours(model: str, out: str, weights_dir: str) -> None:
    """This process is our side: measure and write `out` (also after each measurement)."""
    results = accelerator_ours.measure(
        model,
        batch_size=FLAGS.batch_size,
        eval_batch_size=FLAGS.eval_batch_size,
        steps=FLAGS.steps,
        calls=FLAGS.calls,
        weights_dir=weights_dir,
        budgets=BUDGETS_S,
        total_s=FLAGS.total_s or FLAGS.deadline_s,
        profile_dir=FLAGS.profile_dir,
        log=_log,
        save=lambda partial: _write(out, partial),
    )
    _write(out, results | {"versions": common.versions()})


def run_reference(ours: dict, out: str, weights_dir: str) -> None:
    """This process is the reference's side, at the batch sizes our side found."""
    results = accelerator_reference.measure(
        ours["model"],
        platform=ours["platform"],
        device_kind=ours["device_kind"],
        train_batch_size=ours["train"]["batch_size"],
        eval_batch_size=ours.get("generate_qa", {}).get("batch_size")
        or FLAGS.eval_batch_size
        or 16,
        steps=FLAGS.steps,
        calls=FLAGS.calls,
        weights_dir=weights_dir,
        budgets=BUDGETS_S,
        total_s=FLAGS.total_s or FLAGS.deadline_s,
        compile_forward=FLAGS.torch_compile,
        log=_log,
        save=lambda partial: _write(out, partial),
    )
    _write(out, results | {"versions": common.versions()})


def agreement(ours: dict, ref: dict) -> dict[str, Any]:
    """Compare the two sides' outputs on shared weights (fp32 only)."""
    import numpy as np

    a, b = ours.get("agreement_outputs"), ref.get("agreement_outputs")
    if not a or not b:
        return {}
    out: dict[str, Any] = {
        "loss_relative_difference": common.relative_difference(a["first_loss"], b["first_loss"])
    }
    for name in ("generate_qa", "generate_captions"):
        if name in a and name in b:
            out[f"{name}_tokens_equal"] = common.fraction_equal(
                np.asarray(a[name]), np.asarray(b[name])
            )
    if "ranking" in a and "ranking" in b:
        x, y = np.asarray(a["ranking"]), np.asarray(b["ranking"])
        out["ranking_best_equal"] = float(np.mean(x.argmax(1) == y.argmax(1)))
        out["ranking_scores_relative_difference"] = float(
            np.max(np.abs(x - y)) / max(np.max(np.abs(y)), 1e-30)
        )
    out["agree"] = bool(
        out["loss_relative_difference"] <= LOSS_TOLERANCE
        and all(v >= TOKENS_TOLERANCE for k, v in out.items() if k.endswith("_equal"))
        and out.get("ranking_scores_relative_difference", 0.0) <= SCORES_TOLERANCE
    )
    return out


def _flop(x: float) -> str:
    return f"{x / 1e12:.3f} TFLOP" if x >= 1e11 else f"{x / 1e9:.3f} GFLOP"


def _gib(x: float) -> str:
    return f"{x / 2**30:.2f} GiB" if x >= 2**28 else f"{x / 2**20:.1f} MiB"


def _ratio_row(label: str, key: str, ours: dict, ref: dict) -> str:
    o = ours.get(key, {}).get("examples_per_s")
    r = ref.get(key, {}).get("examples_per_s") if ref.get("available") else None
    target = TARGETS.get(key)
    cells = [f"{o:.2f}" if o else "skipped", f"{r:.2f}" if r else "-"]
    ratio = o / r if o and r else None
    cells.append(f"{ratio:.2f}x" if ratio else "-")
    cells.append(f">= {target:.1f}x" if target else "")
    cells.append(("yes" if ratio >= target else "NO") if ratio and target else "")
    return f"| {label} | " + " | ".join(cells) + " |"


def table(res: dict) -> str:
    """The side-by-side markdown table (and the planner and agreement tables)."""
    ours, ref = res["ours"], res.get("reference") or {}
    t = ours["train"]
    rt = ref.get("train", {}) if ref.get("available") else {}
    qa, cap, rank = ac.QA, ac.CAPTIONS, ac.RANKING
    rows = [
        f"{res['model']} on {ours['device_kind']} ({ours['platform']}), {res['date']}; "
        f"ib_jax compute {ours['dtype']['compute']}, frozen towers {ours['dtype']['frozen']}; "
        f"reference: {ref.get('precision') or ref.get('reason') or ref.get('error', 'not run')}",
        "",
        "| measurement (examples/s unless stated) | ib_jax | reference | ib_jax / reference "
        "| target | met |",
        "|---|---|---|---|---|---|",
        _ratio_row(f"training step, batch {t['batch_size']}", "train", ours, ref),
        f"| training step time | {t['step_time_s']:.3f} s | "
        + (f"{rt['step_time_s']:.3f} s" if rt else "-")
        + " | | | |",
        f"| MFU ({_flop(t['analytic_flops'])} per step, peak: {t['peak_source']}) | "
        f"{t['mfu']:.1%} | " + (f"{rt['mfu']:.1%}" if rt else "-") + f" | | >= {MFU_TARGET:.0%} "
        f"| {'yes' if t['mfu'] >= MFU_TARGET else 'NO'} |",
        f"| peak memory (ours: {t['memory_source']}; reference: "
        f"{rt.get('memory_source', '-')}) | {_gib(t['peak_memory_bytes'])} | "
        + (_gib(rt["peak_memory_bytes"]) if rt else "-")
        + " | | | |",
        _ratio_row(
            f"generate short answers ({qa['num_beams']} beams, {qa['max_new_tokens']} tokens)",
            "generate_qa",
            ours,
            ref,
        ),
        _ratio_row(
            f"generate captions ({cap['num_beams']} beams, {cap['max_new_tokens']} tokens)",
            "generate_captions",
            ours,
            ref,
        ),
        _ratio_row(
            f"rank {rank['num_candidates']} candidates x <= {rank['candidate_len']} tokens",
            "ranking",
            ours,
            ref,
        ),
    ]
    planner = t["planner"]
    xla = t.get("xla_flops")
    scan_note = " (scanned layers: XLA counts one layer)" if t.get("scan_layers") else ""
    rows += [
        "",
        "| launch.aot (planner) vs measured, same config and batch | planner | measured "
        "| measured / planner |",
        "|---|---|---|---|",
        f"| FLOPs per training step (measured: XLA's count of the compiled step{scan_note}) | "
        f"{_flop(planner['analytic_flops'])} | "
        + (f"{_flop(xla)} | {xla / planner['analytic_flops']:.2f}" if xla else "- | -")
        + " |",
        f"| device memory of the step (measured: {t['memory_source']}) | "
        f"{_gib(planner['memory_bytes'])} | {_gib(t['peak_memory_bytes'])} | "
        f"{t['peak_memory_bytes'] / planner['memory_bytes']:.2f} |",
    ]
    agree = res.get("agreement")
    if agree:
        rows += [
            "",
            "| both sides agree (shared fp32 weights) | value | tolerance | met |",
            "|---|---|---|---|",
            f"| step-0 training loss, relative difference | "
            f"{agree['loss_relative_difference']:.1e} | <= {LOSS_TOLERANCE:.0e} | "
            f"{'yes' if agree['loss_relative_difference'] <= LOSS_TOLERANCE else 'NO'} |",
        ]
        for key, label in (
            ("generate_qa_tokens_equal", "short-answer tokens equal"),
            ("generate_captions_tokens_equal", "caption tokens equal"),
            ("ranking_best_equal", "same best candidate"),
        ):
            if key in agree:
                ok = agree[key] >= TOKENS_TOLERANCE
                rows.append(
                    f"| {label} | {agree[key]:.1%} | >= {TOKENS_TOLERANCE:.0%} | "
                    f"{'yes' if ok else 'NO'} |"
                )
        if "ranking_scores_relative_difference" in agree:
            d = agree["ranking_scores_relative_difference"]
            rows.append(
                f"| ranking scores, max relative difference | {d:.1e} | "
                f"<= {SCORES_TOLERANCE:.0e} | {'yes' if d <= SCORES_TOLERANCE else 'NO'} |"
            )
    skipped = ours.get("skipped", []) + [f"reference {s}" for s in ref.get("skipped", [])]
    if skipped:
        rows += ["", "skipped: " + "; ".join(skipped)]
    return "\n".join(rows)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.side == "ours":
        run_ours(FLAGS.model or "flant5xl", FLAGS.out, FLAGS.weights)
        return
    if FLAGS.side == "reference":
        with open(FLAGS.ours_results) as f:
            run_reference(json.load(f), FLAGS.out, FLAGS.weights)
        return
    start = time.perf_counter()
    model = FLAGS.model or _default_model()
    config = ac.load_config(model)
    with tempfile.TemporaryDirectory() as tmp:
        # fp32 models are compared on shared weights (ours writes them, the reference reads them).
        weights = os.path.join(tmp, "hf") if ac.is_fp32(config) else ""
        ours_share = FLAGS.deadline_s * OURS_SHARE
        extra = [f"--model={model}", f"--batch_size={FLAGS.batch_size}"]
        extra += [f"--weights={weights}", f"--profile_dir={FLAGS.profile_dir}"]
        ours = _child("ours", os.path.join(tmp, "ours.json"), ours_share, extra)
        if not ours or "train" not in ours:
            raise SystemExit(f"benchmarks.accelerator: our side failed: {ours}")
        ref: dict[str, Any] = {"available": False, "reason": "--noreference"}
        if FLAGS.reference:
            left = max(FLAGS.deadline_s - (time.perf_counter() - start), 60.0)
            ref = _child(
                "reference",
                os.path.join(tmp, "reference.json"),
                left,
                [f"--weights={weights}", f"--ours_results={os.path.join(tmp, 'ours.json')}"],
            ) or {"available": False, "reason": "the reference process wrote nothing"}
            ref.setdefault("available", False)
    res = {
        "model": model,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "wall_s": time.perf_counter() - start,
        "budgets_s": BUDGETS_S | {"deadline": FLAGS.deadline_s},
        "ours": ours,
        "reference": ref,
    }
    if ref.get("available"):
        res["ratios"] = {
            key: ours[key]["examples_per_s"] / ref[key]["examples_per_s"]
            for key in ("train", "generate_qa", "generate_captions", "ranking")
            if key in ours and key in ref
        }
        res["agreement"] = agreement(ours, ref)
    res["table"] = table(res)
    print(res["table"], flush=True)
    _write(FLAGS.out, res)
    _log(f"results written to {FLAGS.out} ({res['wall_s']:.0f} s)")


def _default_model() -> str:
    """flant5xl where JAX sees an accelerator, tiny on CPU (asked in a short subprocess, so this
    process never holds device memory the measured sides need)."""
    probe = subprocess.run(
        [sys.executable, "-c", "import jax; print(jax.default_backend())"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    backend = probe.stdout.strip().splitlines()[-1] if probe.stdout.strip() else "cpu"
    return "tiny" if backend == "cpu" else "flant5xl"


if __name__ == "__main__":
    define_flags()
    app.run(main)
