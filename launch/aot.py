"""Deviceless compile planner: compile the real train step for a TPU slice that is not here.

    python -m launch.aot --config=configs/instructblip_flant5xxl.py --topology=v5p-128
    python -m launch.aot --config=configs/instructblip_vicuna13b.py --topology=v5e-64 --mesh=1,64,1
    python -m launch.aot --table            # the README table: four released models x topologies
    python -m launch.aot --mode=eval ...    # the eval job's generation step instead (aot_eval.py)

`jax.experimental.topologies` (needs the `libtpu` package; no TPU) gives compile-only devices of
the slice; the mesh, shardings and jitted step are exactly the trainer's (`trainer.build_program`),
so what compiles here compiles there. Reported per device: XLA's memory analysis (arguments,
outputs, temporaries; donated state counted once) against the chip's HBM; per step: the analytic
model FLOPs (ib_jax/train/flops.py; XLA's own count sees a scanned layer body once) and the step
time they imply at a stated MFU. A configuration that does not fit says so and names the knob;
the exit status is then 1 (2: the planner cannot run here). Flags: `--config` as in training
(`--config.section.field=value` overrides too), the others below (`--help`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import re
import sys
import time
from collections.abc import Sequence

import ml_collections

from launch.aot_report import TABLE_RUNS, GiB, Plan, advice, first_lines, report, run_table

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Chip:
    """One TPU generation: what the planner needs to know about its chips."""

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
    """A slice: its chip, jax's topology name for it and its number of chips."""

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
    """Raise PlannerError with the install command when libtpu is missing."""
    if importlib.util.find_spec("libtpu") is None:
        import jax

        raise PlannerError(
            "launch.aot compiles for TPU through libtpu, which is not installed in this environment. "
            f"Install the version jax {jax.__version__} pins: pip install 'jax[tpu]=={jax.__version__}' "
            "(or `pip install libtpu` of that version; on CPU-only machines it only needs to import, "
            "no TPU is used). Or put a `pip install --target DIR libtpu` directory on PYTHONPATH."
        )


def topology_devices(topology: Topology) -> list:
    """Compile-only jax devices of the slice (TensorCores on v4/v5p, chips on v5e/v6e)."""
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
    config: str | ml_collections.ConfigDict,
    *,
    batch_size: int | None = None,
    mesh: str | None = None,
    grad_accum_steps: int | None = None,
    remat_policy: str | None = None,
    lengths: dict[str, int] | None = None,
) -> ml_collections.ConfigDict:
    """The run config to compile: a config file (`path.py[:arg]`, relative to the repository) or
    a loaded config (copied), with the planner's flags applied and every size the step's shapes
    need filled in (batch size, image size, padded lengths)."""
    from ib_jax.configs_util import load_config

    if isinstance(config, str):
        path = config
        config = load_config(
            path if os.path.isabs(path.partition(":")[0]) else os.path.join(REPO, path)
        )
    else:
        path = "--config"
        config = ml_collections.ConfigDict(config.to_dict())  # an unlocked copy
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


def train_step_flops(config: ml_collections.ConfigDict) -> float:
    """Model FLOPs of one step (ib_jax/train/flops.py; remat recomputation not counted)."""
    from ib_jax.models.configs import from_config_dict
    from ib_jax.train import flops

    return flops.train_step_flops(from_config_dict(config.model), flops.Shapes.from_config(config))


# ------------------------------------------------------------------------------------------
# Compile and report
# ------------------------------------------------------------------------------------------


def memory_of(compiled) -> dict[str, int]:
    """Bytes per device of a compiled step: arguments, outputs, aliased, temporaries, code, total.

    Also what benchmarks/accelerator.py prints beside the memory it measures on a real device."""
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
    return memory


def plan(
    config: str | ml_collections.ConfigDict,
    topology_name: str,
    *,
    label: str | None = None,
    mfu: float = 0.4,
    **overrides: object,
) -> Plan:
    """Compile the trainer's step for `config` on the slice `topology_name`; measure and advise.

    `config`: a config file or a loaded config (`label` names it in the report, default: the
    path); `overrides`: the keyword arguments of `load_planned_config`.
    """
    import flax.linen as nn
    import jax

    from ib_jax import sharding, validate
    from ib_jax.train import trainer

    topology = parse_topology(topology_name)
    label = label or (config if isinstance(config, str) else "config")
    config = load_planned_config(config, **overrides)
    devices = topology_devices(topology)
    # The trainer's start-up checks (lengths, image size, mesh, batch split), before compiling.
    if found := validate.problems(config, job="plan", num_devices=len(devices), process_count=1):
        raise PlannerError("; ".join(found))
    per_chip = len(devices) // topology.num_chips
    hbm = topology.chip.hbm_bytes // per_chip
    mesh = sharding.make_mesh(config.mesh, devices=devices)
    rules = sharding.axis_rules(config.mesh)
    accum = int(config.train.grad_accum_steps)
    step_flops = train_step_flops(config)
    step_time = step_flops / (mfu * topology.chip.peak_flops * topology.num_chips)
    result = Plan(
        config=label,
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
            result.error = first_lines(message, 6)
            result.compile_s = time.perf_counter() - start
            result.advice = advice(result)
            return result
    result.compile_s = time.perf_counter() - start
    memory = memory_of(compiled)
    result.memory, result.fits = memory, memory["total"] <= hbm
    result.advice = advice(result)
    return result


def define_flags() -> None:
    """The planner's flags; called only when it runs as a program (see `ib_jax.cli`)."""
    from absl import flags

    from ib_jax import cli
    from launch import aot_eval

    cli.define_config_flag(required=False)
    flags.DEFINE_string("topology", None, "v5p-128, v4-32, v5e-64, v6e-256, or v5p:4x4x4")
    flags.DEFINE_string(
        "mesh", None, "data,fsdp,tensor sizes (one may be -1), default: the config's"
    )
    flags.DEFINE_integer("batch_size", None, "global batch (default: the config's)")
    flags.DEFINE_integer("grad_accum_steps", None, "micro-batches per step (default: the config's)")
    flags.DEFINE_enum(
        "remat_policy",
        None,
        ["none", "full", "dots", "dots_no_batch"],
        "activation rematerialization (default: the config's)",
    )
    for key, default in DEFAULT_LENGTHS.items():
        flags.DEFINE_integer(key, None, f"padded length (default: the config's, else {default})")
    flags.DEFINE_float("mfu", 0.4, "assumed model FLOPs utilisation for the step time")
    flags.DEFINE_bool("json", False, "print the plan as one JSON line")
    flags.DEFINE_bool("table", False, "run the README table (every row compiles)")
    flags.DEFINE_string("out", None, "with --table: also write the markdown table here")
    flags.DEFINE_integer("jobs", 1, "with --table: rows compiled at once")
    flags.DEFINE_string(
        "cache_dir", None, "with --table: one JSON per row; rows already there are not recompiled"
    )
    aot_eval.define_flags()
    flags.adopt_module_key_flags(cli)


def main(argv: Sequence[str]) -> int:
    """Plan one configuration (or the README table) from the flags; returns the exit status."""
    from absl import app, flags

    from ib_jax import cli
    from launch import aot_eval
    from launch.aot_report import EVAL_TABLE_HEADER, TABLE_HEADER

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {list(argv[1:])}", exitcode=2)
    FLAGS = flags.FLAGS
    cli.quiet_console()
    # Compile-only TPU devices need no TPU backend; with libtpu installed jax would otherwise try
    # (and fail, slowly) to open a TPU on this machine.
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    try:
        evaluate = FLAGS.mode == "eval"
        if FLAGS.table:
            require_libtpu()
            runs, header = (
                (aot_eval.TABLE_RUNS, EVAL_TABLE_HEADER) if evaluate else (TABLE_RUNS, TABLE_HEADER)
            )
            print(run_table(runs, FLAGS.mfu, FLAGS.out, FLAGS.jobs, FLAGS.cache_dir, header))
            return 0
        if FLAGS.config is None or not FLAGS.topology:
            raise app.UsageError("--config and --topology are required (or --table)", exitcode=2)
        label = cli.config_path(flags.FLAGS["config"])
        if evaluate:
            result = aot_eval.plan_from_flags(FLAGS, label)
        else:
            result = plan(
                FLAGS.config,
                FLAGS.topology,
                label=label,
                mfu=FLAGS.mfu,
                batch_size=FLAGS.batch_size,
                mesh=FLAGS.mesh,
                grad_accum_steps=FLAGS.grad_accum_steps,
                remat_policy=FLAGS.remat_policy,
                lengths={k: FLAGS[k].value for k in DEFAULT_LENGTHS if FLAGS[k].value},
            )
    except PlannerError as e:
        print(f"launch.aot: {e}", file=sys.stderr)
        return 2
    print(json.dumps(dataclasses.asdict(result)) if FLAGS.json else report(result))
    return 0 if result.fits else 1


if __name__ == "__main__":
    from absl import app

    define_flags()
    app.run(main)
