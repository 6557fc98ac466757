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
import json
import os
import sys
import time
from collections.abc import Sequence

import flax.linen as nn
import jax
import ml_collections
from absl import app, flags

from ib_jax import sharding, validate
from ib_jax.contract import cli
from ib_jax.contract.model import from_config_dict
from ib_jax.train import flops, trainer
from launch import aot_eval
from launch.aot_common import (
    DEFAULT_LENGTHS,
    PlannerError,
    load_planned_config,
    memory_of,
    parse_topology,
    require_libtpu,
    topology_devices,
)
from launch.aot_report import (
    EVAL_TABLE_HEADER,
    TABLE_HEADER,
    TABLE_RUNS,
    Plan,
    advice,
    first_lines,
    report,
    run_table,
)

# ------------------------------------------------------------------------------------------
# FLOPs
# ------------------------------------------------------------------------------------------


def train_step_flops(config: ml_collections.ConfigDict) -> float:
    """Model FLOPs of one step (ib_jax/train/flops.py; remat recomputation not counted)."""
    return flops.train_step_flops(from_config_dict(config.model), flops.Shapes.from_config(config))


# ------------------------------------------------------------------------------------------
# Compile and report
# ------------------------------------------------------------------------------------------


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
    """The planner's flags; called only when it runs as a program (see `ib_jax.contract.cli`)."""
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
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {list(argv[1:])}", exitcode=2)
    FLAGS = flags.FLAGS
    cli.quiet_console()
    # Compile-only TPU devices need no TPU backend; with libtpu installed jax would otherwise try
    # (and fail, slowly) to open a TPU on this machine. jax read the environment when it was
    # imported, so the default goes to its config too (the table's row processes inherit it).
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    jax.config.update("jax_platforms", os.environ["JAX_PLATFORMS"])
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
    define_flags()
    app.run(cli.guarded("aot", main))
