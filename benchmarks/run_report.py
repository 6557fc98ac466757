"""The CPU suite's markdown report: one table of timings and agreement, then the extra sections."""

from __future__ import annotations

from typing import Any

from benchmarks import run_lora

LOSS_TOLERANCE = 1e-5  # relative difference of the forward losses for "both sides agree"
TOKENS_TOLERANCE = 0.99  # share of equal generated tokens for "both sides agree"


def _fmt_s(x: float) -> str:
    return f"{x * 1e3:.0f} ms" if x < 1 else f"{x:.2f} s"


def _mib(x: int) -> str:
    return f"{x / 2**20:.1f} MiB"


def _yes(ok: bool) -> str:
    return "yes" if ok else "NO"


def agreement_rows(res: dict[str, Any]) -> list[str]:
    """The rows that say whether both sides computed the same thing."""
    ref, ours, agree = res["reference"], res["ours"], res["agreement"]
    greedy, beam = agree["tokens_equal"]["greedy"], agree["tokens_equal"]["beam"]
    return [
        f"| both sides agree: forward loss | {ref['forward_loss']:.6f} | {ours['forward_loss']:.6f} "
        f"| {agree['loss_relative_difference']:.1e} relative | <= {LOSS_TOLERANCE:.0e} | "
        f"{_yes(agree['loss_relative_difference'] <= LOSS_TOLERANCE)} |",
        f"| both sides agree: generated tokens equal (greedy / beam) | | {greedy * 100:.1f}% / "
        f"{beam * 100:.1f}% | | >= {TOKENS_TOLERANCE:.0%} | "
        f"{_yes(min(greedy, beam) >= TOKENS_TOLERANCE)} |",
    ]


def table(res: dict[str, Any]) -> str:
    """Markdown: the side-by-side table, then compile times and memory when measured."""
    ref, ours, cfg = res["reference"], res["ours"], res["config"]
    rows = [
        "| measurement | PyTorch reference | ib_jax | ratio (ref / ours) | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for key, label, target in (
        ("train_step", "training step (frozen ViT + LM)", 1.0),
        ("forward", "forward + loss", 1.0),
        ("greedy", f"generate, greedy, {cfg['new_tokens']} tokens", 3.0),
        ("beam", f"generate, {cfg['num_beams']} beams, {cfg['new_tokens']} tokens", 3.0),
    ):
        r, o = ref[key]["median_s"], ours[key]["median_s"]
        rows.append(
            f"| {label} | {_fmt_s(r)} | {_fmt_s(o)} | {r / o:.2f}x | >= {target:.1f}x | "
            f"{_yes(r / o >= target)} |"
        )
    r, o = ref["first_token"]["median_s"], ours["first_token"]["median_s"]
    rows.append(
        f"| generate 1 token (encode + first step: the floor under every generation) | "
        f"{_fmt_s(r)} | {_fmt_s(o)} | {r / o:.2f}x | | |"
    )
    r, o = ref["greedy_per_step_s"], ours["greedy_per_step_s"]
    rows.append(
        f"| one greedy decode step ((n tokens - 1 token) / (n - 1)) | {r * 1e3:.1f} ms | "
        f"{o * 1e3:.1f} ms | {r / o:.2f}x | | |"
    )
    peak, mfu = res["peak"], res["mfu"]
    rows.append(
        f"| MFU of the training step (analytic {ours['analytic_train_flops'] / 1e9:.1f} GFLOP, "
        f"XLA fp32 matmul peak {peak['xla_best_flops_per_s'] / 1e9:.1f} GFLOP/s) | "
        f"{res['mfu_reference'] * 100:.1f}% (vs torch.mm peak "
        f"{peak['torch_best_flops_per_s'] / 1e9:.1f} GFLOP/s) | {mfu * 100:.1f}% | | >= 40% | "
        f"{_yes(mfu >= 0.4)} |"
    )
    compiled = ours.get("compiled_flops")
    if compiled:
        analytic = ours["analytic_train_flops"]
        dev = compiled / analytic - 1
        rows.append(
            f"| compiled / analytic FLOPs of the step | | {compiled / 1e9:.1f} / "
            f"{analytic / 1e9:.1f} GFLOP ({dev * 100:+.1f}%) | | within 10% | "
            f"{_yes(abs(dev) <= 0.10)} |"
        )
    ip = res.get("input_pipeline")
    if ip:
        need = cfg["batch"] / ours["train_step"]["median_s"]
        rows.append(
            f"| input pipeline, 224 px JPEGs, 1 core (workers=0) | | "
            f"{ip['examples_per_s']:.1f} ex/s (step consumes {need:.1f} ex/s) | | keeps up | "
            f"{_yes(ip['examples_per_s'] >= need)} |"
        )
    rows += run_lora.rows(res)  # the `lora` section, when measured
    rows += agreement_rows(res)
    out = ["\n".join(rows)]
    if res.get("compile"):
        out.append(
            "| training-step compile, tiny widths, LM layers (half encoder, half decoder) | "
            "total s | trace + lower s | XLA compile s | StableHLO lines |\n"
            "|---|---|---|---|---|\n"
            + "\n".join(
                f"| {k} | {v['total_s']:.1f} | {v['trace_lower_s']:.1f} | "
                f"{v['xla_compile_s']:.1f} | {v['hlo_lines']} |"
                for k, v in res["compile"].items()
            )
        )
    if res.get("memory"):
        lines = [
            "| training-step memory (memory_analysis) | temp | arguments | outputs | "
            "peak (args + out - aliased + temp) |",
            "|---|---|---|---|---|",
        ]
        for k, m in res["memory"].items():
            if m:
                lines.append(
                    f"| remat={k} | {_mib(m['temp_size_in_bytes'])} | "
                    f"{_mib(m['argument_size_in_bytes'])} | {_mib(m['output_size_in_bytes'])} | "
                    f"{_mib(m['peak_bytes'])} |"
                )
        out.append("\n".join(lines))
    out.append(
        f"threads: {res['threads']}; reference attention: {ref['attn_implementation']}; "
        f"init: {res['init']}; load before: {res['load_before']}; "
        f"load after: {res['load_after']}"
    )
    return "\n\n".join(out)
