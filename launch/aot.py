"""Deviceless compile planner: compile the real train step for a TPU slice that is not here.

    python -m launch.aot --config=configs/instructblip_flant5xxl.py --topology=v5p-128
    python -m launch.aot --config=configs/instructblip_vicuna13b.py --topology=v5e-64 --mesh=1,64,1
    python -m launch.aot --table            # the README table: four released models x topologies

`jax.experimental.topologies` (needs the `libtpu` package; no TPU) gives compile-only devices of
the slice; the mesh, shardings and jitted step are exactly the trainer's (`trainer.build_program`),
so what compiles here compiles there. Reported per device: XLA's memory analysis (arguments,
outputs, temporaries; donated state counted once) against the chip's HBM; per step: the analytic
model FLOPs (ib_jax/train/flops.py; XLA's own count sees a scanned layer body once) and the step
time they imply at a stated MFU. A configuration that does not fit says so and names the knob.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GiB = 1024**3


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str  # jax topology prefix
    hbm_bytes: int  # per chip
    peak_flops: float  # dense bf16 per chip
    cores_in_name: bool  # v4/v5p slice names count TensorCores (2 per chip), v5e/v6e count chips


CHIPS = {
    "v4": Chip("v4", 32 * GiB, 275e12, True),
    "v5p": Chip("v5p", 95 * GiB, 459e12, True),
    "v5e": Chip("v5e", 16 * GiB, 197e12, False),
    "v6e": Chip("v6e", 32 * GiB, 918e12, False),
}
ALIASES = {"v5litepod": "v5e", "v6litepod": "v6e", "v5": "v5p"}
# Standard slice shapes by number of chips (3-D torus for v4/v5p, 2-D for v5e/v6e).
SHAPES_3D = {
    4: "2x2x1",
    8: "2x2x2",
    16: "2x2x4",
    32: "2x4x4",
    64: "4x4x4",
    128: "4x4x8",
    256: "4x8x8",
    512: "8x8x8",
    1024: "8x8x16",
    2048: "8x16x16",
    4096: "16x16x16",
}
SHAPES_2D = {
    1: "1x1",
    4: "2x2",
    8: "2x4",
    16: "4x4",
    32: "4x8",
    64: "8x8",
    128: "8x16",
    256: "16x16",
}


class PlannerError(RuntimeError):
    """The planner cannot run here (no libtpu, unknown topology, bad flags)."""


@dataclasses.dataclass(frozen=True)
class Topology:
    label: str  # as given, e.g. "v5p-128"
    chip: Chip
    spec: str  # jax topology name, e.g. "v5p:4x4x4"
    num_chips: int


def parse_topology(name: str) -> Topology:
    """`v5p-128` / `v5e-64` / `v6e-256` / `v4-32` (GCP slice names) or `v5p:4x4x4` (chip grid)."""
    match = re.fullmatch(r"(v\d[a-z]*)[-:](.+)", name.strip())
    if not match:
        raise PlannerError(
            f"topology {name!r}: expected e.g. v5p-128, v5e-64, v6e-256, v4-32 or v5p:4x4x4"
        )
    prefix, size = ALIASES.get(match.group(1), match.group(1)), match.group(2)
    if prefix not in CHIPS:
        raise PlannerError(f"topology {name!r}: unknown chip {prefix!r}; known: {sorted(CHIPS)}")
    chip = CHIPS[prefix]
    if "x" in size:
        grid = size
        num_chips = math.prod(int(n) for n in size.split("x"))
    else:
        count = int(size)
        num_chips = count // 2 if chip.cores_in_name else count
        shapes = SHAPES_3D if chip.cores_in_name else SHAPES_2D
        if num_chips not in shapes:
            raise PlannerError(
                f"topology {name!r}: no standard {prefix} slice of {num_chips} chips; "
                f"known sizes {[n * (2 if chip.cores_in_name else 1) for n in shapes]}"
            )
        grid = shapes[num_chips]
    return Topology(name, chip, f"{prefix}:{grid}", num_chips)


def require_libtpu() -> None:
    if importlib.util.find_spec("libtpu") is None:
        import jax

        raise PlannerError(
            "launch.aot compiles for TPU through libtpu, which is not installed in this environment. "
            f"Install the version jax {jax.__version__} pins: pip install 'jax[tpu]=={jax.__version__}' "
            "(or `pip install libtpu` of that version; on CPU-only machines it only needs to import, "
            "no TPU is used). Or put a `pip install --target DIR libtpu` directory on PYTHONPATH."
        )


def topology_devices(topology: Topology) -> list:
    require_libtpu()
    # libtpu looks for these to describe the host it runs on; the planner describes a slice instead.
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v4-8")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    # libtpu takes /tmp/libtpu_lockfile to own the chips; compile-only devices own nothing, and
    # several plans (--table --jobs) may run at once.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies

    return list(topologies.get_topology_desc(topology.spec, "tpu").devices)


# ------------------------------------------------------------------------------------------
# Configuration
# ------------------------------------------------------------------------------------------

# Fixed padded lengths when the config's data section does not give them (the released configs
# leave data to the held-in mixture config): LAVIS truncates instructions at 128 tokens; targets
# of the held-in datasets are short answers and captions.
DEFAULT_LENGTHS = dict(qformer_max_len=128, text_max_len=128, target_max_len=64)


def load_planned_config(
    path: str,
    *,
    batch_size: int | None = None,
    mesh: str | None = None,
    grad_accum_steps: int | None = None,
    remat_policy: str | None = None,
    lengths: dict[str, int] | None = None,
):
    from ib_jax.configs_util import load_config

    config = load_config(
        path if os.path.isabs(path.partition(":")[0]) else os.path.join(REPO, path)
    )
    config.unlock()
    data = config.data
    batch = batch_size or data.get("global_batch_size") or config.train.get("batch_size")
    if not batch:
        raise PlannerError(
            f"{path}: no batch size (config.data.global_batch_size / config.train.batch_size); "
            "pass --batch_size"
        )
    data.global_batch_size = int(batch)
    data.image_size = int(data.get("image_size") or config.model.vision.image_size)
    for key, default in DEFAULT_LENGTHS.items():
        data[key] = int((lengths or {}).get(key) or data.get(key) or default)
    if mesh:
        try:
            sizes = [int(n) for n in mesh.split(",")]
        except ValueError:
            sizes = []
        if len(sizes) != 3:
            raise PlannerError(f"--mesh={mesh!r}: expected data,fsdp,tensor, e.g. 1,64,1 or -1,8,1")
        config.mesh.shape.update(dict(zip(("data", "fsdp", "tensor"), sizes)))
    if grad_accum_steps:
        config.train.grad_accum_steps = int(grad_accum_steps)
    if remat_policy:
        config.model.remat_policy = remat_policy
    return config


# ------------------------------------------------------------------------------------------
# FLOPs
# ------------------------------------------------------------------------------------------


def train_step_flops(config) -> float:
    """Model FLOPs of one step (ib_jax/train/flops.py; remat recomputation not counted)."""
    from ib_jax.models.configs import from_config_dict
    from ib_jax.train import flops

    d = config.data
    shapes = flops.Shapes(
        d.global_batch_size, d.image_size, d.qformer_max_len, d.text_max_len, d.target_max_len
    )
    return flops.train_step_flops(from_config_dict(config.model), shapes)


# ------------------------------------------------------------------------------------------
# Compile and report
# ------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Plan:
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
    memory: dict[str, int] | None = (
        None  # bytes per device: arguments, outputs, aliased, temporaries, code, total
    )
    error: str | None = None  # XLA's message when the step does not fit / compile
    advice: list[str] = dataclasses.field(default_factory=list)


def plan(config_path: str, topology_name: str, *, mfu: float = 0.4, **overrides) -> Plan:
    import flax.linen as nn
    import jax

    from ib_jax import sharding
    from ib_jax.train import trainer

    topology = parse_topology(topology_name)
    config = load_planned_config(config_path, **overrides)
    devices = topology_devices(topology)
    per_chip = len(devices) // topology.num_chips
    hbm = topology.chip.hbm_bytes // per_chip
    mesh = sharding.make_mesh(config.mesh, devices=devices)
    rules = sharding.axis_rules(config.mesh)
    batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]
    accum = int(config.train.grad_accum_steps)
    if config.data.global_batch_size % (batch_shards * accum):
        raise PlannerError(
            f"batch {config.data.global_batch_size} does not split into {accum} micro-batch(es) "
            f"over data x fsdp = {batch_shards} devices; change --batch_size or --mesh"
        )
    step_flops = train_step_flops(config)
    step_time = step_flops / (mfu * topology.chip.peak_flops * topology.num_chips)
    result = Plan(
        config=config_path,
        topology=topology_name,
        num_chips=topology.num_chips,
        num_devices=len(devices),
        mesh=dict(mesh.shape),
        batch_size=config.data.global_batch_size,
        grad_accum_steps=accum,
        remat_policy=config.model.remat_policy,
        lengths={k: int(config.data[k]) for k in DEFAULT_LENGTHS},
        hbm_per_device=hbm,
        fits=False,
        compile_s=0.0,
        step_flops=step_flops,
        mfu=mfu,
        step_time_s=step_time,
    )
    start = time.perf_counter()
    # build_program makes its init key eagerly (`jax.random.key(0)`), which under `jax.set_mesh` of
    # compile-only devices tries to run on them; shapes and shardings need only the axis rules.
    with nn.logical_axis_rules(rules):
        program = trainer.build_program(config, mesh, rules)
    with sharding.activate(mesh, rules):
        lowered = program.step_fn.lower(
            program.abstract_state, program.abstract_frozen, program.abstract_batch
        )
        try:
            compiled = lowered.compile()
        except jax.errors.JaxRuntimeError as e:
            message = str(e)
            if "RESOURCE_EXHAUSTED" not in message and "memory" not in message.lower():
                raise
            result.error = _first_lines(message, 6)
            result.compile_s = time.perf_counter() - start
            result.advice = advice(result)
            return result
    result.compile_s = time.perf_counter() - start
    stats = compiled.memory_analysis()
    memory = dict(
        arguments=stats.argument_size_in_bytes,
        outputs=stats.output_size_in_bytes,
        aliased=stats.alias_size_in_bytes,
        temporaries=stats.temp_size_in_bytes,
        code=stats.generated_code_size_in_bytes,
    )
    # Donated state is both an argument and an output: XLA reports it in both and as aliased.
    memory["total"] = (
        memory["arguments"]
        + memory["outputs"]
        - memory["aliased"]
        + memory["temporaries"]
        + memory["code"]
    )
    result.memory, result.fits = memory, memory["total"] <= hbm
    result.advice = advice(result)
    return result


def _first_lines(text: str, n: int) -> str:
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
    return f"{n / GiB:.1f}"


def report(p: Plan) -> str:
    mesh = "x".join(f"{k}={v}" for k, v in p.mesh.items())
    lines = [
        f"{p.config} on {p.topology} ({p.num_chips} chips, {p.num_devices} devices, "
        f"{_gib(p.hbm_per_device)} GiB HBM each)",
        f"  mesh {mesh}, global batch {p.batch_size}, grad_accum_steps {p.grad_accum_steps}, "
        f"remat {p.remat_policy}, lengths {p.lengths}; compiled in {p.compile_s:.0f} s",
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
    lines.append(
        f"  {p.step_flops / 1e15:.1f} PFLOP per step (analytic) -> {p.step_time_s:.2f} s per step "
        f"at MFU {p.mfu:.0%} ({p.batch_size / p.step_time_s:.0f} examples/s)"
    )
    lines += [f"  try: {tip}" for tip in p.advice]
    return "\n".join(lines)


TABLE_HEADER = (
    "| model | topology | mesh (data,fsdp,tensor) | batch | remat | per device GiB: arguments / temporaries "
    "/ total (of HBM) | fits | PFLOP/step (analytic) | step s @ MFU | compile s (here) |\n"
    "|---|---|---|---|---|---|---|---|---|---|"
)


def table_row(p: Plan) -> str:
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
    config_path: str, topology: str, mesh: str | None, mfu: float, cache_dir: str | None
) -> str:
    cache = None
    if cache_dir:
        stem = f"{os.path.basename(config_path).removesuffix('.py')}_{topology}_{(mesh or 'config').replace(',', '_')}"
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
    runs: Sequence[tuple[str, str, str | None]],
    mfu: float,
    out: str | None,
    jobs: int = 1,
    cache_dir: str | None = None,
) -> str:
    """Each row in its own process (a failed or huge compile cannot take the others down)."""
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(max(jobs, 1)) as pool:
        rows = list(pool.map(lambda run: _run_row(*run, mfu, cache_dir), runs))
    text = TABLE_HEADER + "\n" + "\n".join(rows)
    if out:
        with open(out, "w") as f:
            f.write(text + "\n")
    return text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", help="configs/*.py[:arg]")
    parser.add_argument("--topology", help="v5p-128, v4-32, v5e-64, v6e-256, or v5p:4x4x4")
    parser.add_argument(
        "--mesh", help="data,fsdp,tensor sizes (one may be -1), default: the config's"
    )
    parser.add_argument("--batch_size", type=int, help="global batch (default: the config's)")
    parser.add_argument("--grad_accum_steps", type=int)
    parser.add_argument("--remat_policy", choices=["none", "full", "dots", "dots_no_batch"])
    for key in DEFAULT_LENGTHS:
        parser.add_argument(
            f"--{key}",
            type=int,
            help=f"padded length (default: the config's, else {DEFAULT_LENGTHS[key]})",
        )
    parser.add_argument(
        "--mfu", type=float, default=0.4, help="assumed model FLOPs utilisation for the step time"
    )
    parser.add_argument("--json", action="store_true", help="print the plan as one JSON line")
    parser.add_argument(
        "--table", action="store_true", help="run the README table (every row compiles)"
    )
    parser.add_argument("--out", help="with --table: also write the markdown table here")
    parser.add_argument("--jobs", type=int, default=1, help="with --table: rows compiled at once")
    parser.add_argument(
        "--cache_dir", help="with --table: one JSON per row; rows already there are not recompiled"
    )
    flags = parser.parse_args(argv)
    # Compile-only TPU devices need no TPU backend; with libtpu installed jax would otherwise try
    # (and fail, slowly) to open a TPU on this machine.
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    try:
        if flags.table:
            require_libtpu()
            print(run_table(TABLE_RUNS, flags.mfu, flags.out, flags.jobs, flags.cache_dir))
            return 0
        if not flags.config or not flags.topology:
            parser.error("--config and --topology are required (or --table)")
        lengths = {k: getattr(flags, k) for k in DEFAULT_LENGTHS if getattr(flags, k)}
        result = plan(
            flags.config,
            flags.topology,
            mfu=flags.mfu,
            batch_size=flags.batch_size,
            mesh=flags.mesh,
            grad_accum_steps=flags.grad_accum_steps,
            remat_policy=flags.remat_policy,
            lengths=lengths,
        )
    except PlannerError as e:
        print(f"launch.aot: {e}", file=sys.stderr)
        return 2
    print(json.dumps(dataclasses.asdict(result)) if flags.json else report(result))
    return 0 if result.fits else 1


if __name__ == "__main__":
    sys.exit(main())
