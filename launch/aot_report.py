"""The compile planner's result (`Plan`), the advice drawn from it, and its text and table forms.

Split from `launch/aot.py`, which compiles: everything here works on finished plans, without jax
or libtpu. `run_table` makes the README table by running `python -m launch.aot --json` once per
row, each in its own process, and reading back the plan it prints.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

GiB = 1024**3


@dataclasses.dataclass
class Plan:
    """What `launch.aot.plan` found for one configuration on one slice (JSON-able).

    Sizes are bytes; `memory` is XLA's per-device analysis, None when the compile ran out of
    memory (then `error` holds XLA's message); `advice` names the flags that would help.
    """

    config: str
    topology: str
    num_chips: int
    num_devices: int
    mesh: dict[str, int]
    batch_size: int
    grad_accum_steps: int
    remat_policy: str
    lengths: dict[str, int]
    hbm_per_device: int
    fits: bool
    compile_s: float
    step_flops: float
    mfu: float
    step_time_s: float
    # Bytes per device: arguments, outputs, aliased, temporaries, code, total.
    memory: dict[str, int] | None = None
    error: str | None = None  # XLA's message when the step does not fit / compile
    advice: list[str] = dataclasses.field(default_factory=list)
    mode: str = "train"  # or "eval": the eval job's generation / ranking step (no FLOPs)
    setting: str = ""  # eval: which step, in which dtypes


def first_lines(text: str, n: int) -> str:
    """The first `n` non-blank lines of `text` (XLA's out-of-memory messages run to pages)."""
    return "\n".join([line for line in text.splitlines() if line.strip()][:n])


def advice(p: Plan) -> list[str]:
    """Which knob would help, from where the bytes are (or from XLA's message when it did not fit)."""
    if p.fits:
        return []
    tips = []
    n, fsdp = p.num_devices, p.mesh["fsdp"]
    mem = p.memory or {}
    params_heavy = not mem or mem.get("arguments", 0) >= mem.get("temporaries", 0)
    if fsdp < n and params_heavy:
        tips.append(
            f"shard parameters and optimizer state: larger fsdp, e.g. --mesh=1,{n},1 "
            f"(parameters are replicated {n // (fsdp * p.mesh['tensor'])}x now)"
        )
    if p.remat_policy in ("none", "dots", "dots_no_batch"):
        tips.append(
            "save fewer activations: --remat_policy=full (recomputes each layer in the backward pass)"
        )
    local_batch = p.batch_size // (p.mesh["data"] * p.mesh["fsdp"] * p.grad_accum_steps)
    if local_batch > 1:
        tips.append(
            f"micro-batches: --grad_accum_steps={p.grad_accum_steps * 2} halves the activations "
            f"({local_batch} -> {local_batch // 2} examples per device per micro-step)"
        )
    if fsdp >= n and not tips:
        tips.append(
            "the slice is too small for this model: use more chips or tensor parallelism (--mesh=1,N/4,4)"
        )
    if fsdp < n and not params_heavy:
        tips.append(f"fsdp also splits the batch over more devices: --mesh=1,{n},1")
    return tips


def _gib(n: int) -> str:
    """Bytes as GiB with one decimal."""
    return f"{n / GiB:.1f}"


def report(p: Plan) -> str:
    """The plan as a few lines of text: mesh, memory per device against HBM, FLOPs, advice."""
    mesh = "x".join(f"{k}={v}" for k, v in p.mesh.items())
    step = (
        f"eval step ({p.setting}), global batch {p.batch_size}"
        if p.mode == "eval"
        else f"global batch {p.batch_size}, grad_accum_steps {p.grad_accum_steps}, "
        f"remat {p.remat_policy}"
    )
    lines = [
        f"{p.config} on {p.topology} ({p.num_chips} chips, {p.num_devices} devices, "
        f"{_gib(p.hbm_per_device)} GiB HBM each)",
        f"  mesh {mesh}, {step}, lengths {p.lengths}; compiled in {p.compile_s:.0f} s",
    ]
    if p.memory:
        m = p.memory
        lines.append(
            f"  per device: arguments {_gib(m['arguments'])} GiB, outputs {_gib(m['outputs'])} GiB "
            f"(aliased with donated arguments {_gib(m['aliased'])} GiB), temporaries "
            f"{_gib(m['temporaries'])} GiB, code {_gib(m['code'])} GiB -> total {_gib(m['total'])} GiB "
            f"of {_gib(p.hbm_per_device)} GiB: {'FITS' if p.fits else 'DOES NOT FIT'}"
        )
    else:
        lines.append(
            f"  DOES NOT FIT: XLA refused to compile it into {_gib(p.hbm_per_device)} GiB per device:"
        )
        lines += ["    " + line for line in (p.error or "").splitlines()]
    if p.mode == "train":
        lines.append(
            f"  {p.step_flops / 1e15:.1f} PFLOP per step (analytic) -> {p.step_time_s:.2f} s per "
            f"step at MFU {p.mfu:.0%} ({p.batch_size / p.step_time_s:.0f} examples/s)"
        )
    lines += [f"  try: {tip}" for tip in p.advice]
    return "\n".join(lines)


TABLE_HEADER = (
    "| model | topology | mesh (data,fsdp,tensor) | batch | remat | per device GiB: arguments / temporaries "
    "/ total (of HBM) | fits | PFLOP/step (analytic) | step s @ MFU | compile s (here) |\n"
    "|---|---|---|---|---|---|---|---|---|---|"
)


EVAL_TABLE_HEADER = (
    "| model | topology | mesh (data,fsdp,tensor) | eval batch | step | per device GiB: arguments / "
    "temporaries / total (of HBM) | fits | compile s (here) |\n|---|---|---|---|---|---|---|---|"
)


def table_row(p: Plan) -> str:
    """The plan as one row under TABLE_HEADER (or EVAL_TABLE_HEADER; launch/AOT_RESULTS.md)."""
    name = os.path.splitext(os.path.basename(p.config.partition(":")[0]))[0].replace(
        "instructblip_", ""
    )
    mesh = f"{p.mesh['data']},{p.mesh['fsdp']},{p.mesh['tensor']}"
    if p.memory:
        m = p.memory
        memory = (
            f"{_gib(m['arguments'])} / {_gib(m['temporaries'])} / {_gib(m['total'])} "
            f"({_gib(p.hbm_per_device)})"
        )
    else:
        memory = f"XLA: out of memory ({_gib(p.hbm_per_device)})"
    if p.mode == "eval":
        return (
            f"| {name} | {p.topology} | {mesh} | {p.batch_size} | {p.setting} | {memory} | "
            f"{'yes' if p.fits else 'no'} | {p.compile_s:.0f} |"
        )
    return (
        f"| {name} | {p.topology} | {mesh} | {p.batch_size} | {p.remat_policy} | {memory} | "
        f"{'yes' if p.fits else 'no'} | {p.step_flops / 1e15:.2f} | {p.step_time_s:.3f} @ {p.mfu:.0%} | "
        f"{p.compile_s:.0f} |"
    )


# The README table: the four released models at the paper's batch sizes on two TPU generations,
# first with the configs' own mesh (pure data parallel), then sharded where that does not fit.
TABLE_RUNS = [
    ("configs/instructblip_flant5xl.py", "v5p-128", None),
    ("configs/instructblip_flant5xxl.py", "v5p-128", None),
    ("configs/instructblip_vicuna7b.py", "v5p-128", None),
    ("configs/instructblip_vicuna13b.py", "v5p-128", None),
    ("configs/instructblip_flant5xl.py", "v5e-64", "1,64,1"),
    ("configs/instructblip_flant5xxl.py", "v5e-64", "1,64,1"),
    ("configs/instructblip_vicuna7b.py", "v5e-64", "1,64,1"),
    ("configs/instructblip_vicuna13b.py", "v5e-64", "1,64,1"),
]


def _run_row(
    config_path: str,
    topology: str,
    mesh: str | None,
    mfu: float,
    cache_dir: str | None,
    extra: Sequence[str] = (),
) -> str:
    """One table row: from the cache, or from a `python -m launch.aot --json [extra]` run."""
    cache = None
    if cache_dir:
        stem = f"{os.path.basename(config_path).removesuffix('.py')}_{topology}_{(mesh or 'config').replace(',', '_')}"
        stem += "".join(f"_{flag.lstrip('-').replace('=', '_')}" for flag in extra)
        cache = os.path.join(cache_dir, stem + ".json")
        if os.path.exists(cache):
            with open(cache) as f:
                return table_row(Plan(**json.load(f)))
    command = [
        sys.executable,
        "-m",
        "launch.aot",
        f"--config={config_path}",
        f"--topology={topology}",
        f"--mfu={mfu}",
        "--json",
        *extra,
    ] + ([f"--mesh={mesh}"] if mesh else [])
    print("$", " ".join(command[1:]), file=sys.stderr, flush=True)
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if done.returncode not in (0, 1) or not done.stdout.strip():  # 1 = compiled, does not fit
        last = (
            done.stderr.strip().splitlines()[-1]
            if done.stderr.strip()
            else f"exit {done.returncode}"
        )
        return f"| {config_path} | {topology} | {mesh or 'config'} | | | planner failed: {last} | | | | |"
    result = Plan(**json.loads(done.stdout.strip().splitlines()[-1]))
    print(report(result), file=sys.stderr, flush=True)
    if cache:
        os.makedirs(cache_dir, exist_ok=True)
        with open(cache, "w") as f:
            json.dump(dataclasses.asdict(result), f)
    return table_row(result)


def run_table(
    runs: Sequence[tuple],
    mfu: float,
    out: str | None,
    jobs: int = 1,
    cache_dir: str | None = None,
    header: str = TABLE_HEADER,
) -> str:
    """Each row in its own process (a failed or huge compile cannot take the others down).

    A run is (config path, topology, mesh or None[, extra flags])."""
    import concurrent.futures

    def row(run: tuple) -> str:
        config_path, topology, mesh, *extra = run
        return _run_row(config_path, topology, mesh, mfu, cache_dir, *extra)

    with concurrent.futures.ThreadPoolExecutor(max(jobs, 1)) as pool:
        rows = list(pool.map(row, runs))
    text = header + "\n" + "\n".join(rows)
    if out:
        with open(out, "w") as f:
            f.write(text + "\n")
    return text
