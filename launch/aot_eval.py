"""The planner's eval mode: compile the eval job's generation (or ranking) step for a TPU slice
that is not here, and report its memory per device.

    python -m launch.aot --mode=eval --config=configs/instructblip_flant5xxl.py --topology=v5e-16 \
        --mesh=1,-1,1 --eval_dtype=bfloat16 [--setting=captions|qa|rank100] [--batch_size=64]
    python -m launch.aot --mode=eval --table   # the released models on v5e / v4 slices

The step is the eval job's own (`ib_jax.eval.program.InferenceProgram.lower_generate` /
`lower_rank`: the same jit, shardings and decode loop), with the parameters as the eval job
restores them (`program.inference_config`: `config.eval.dtype` / `param_dtype`, or
`--eval_dtype`) on the mesh `--mesh` (default `config.eval.mesh`, else `config.mesh`). Settings are
the held-out ones: captions (5 beams, 80 new tokens: the longest decode cache), qa (5 beams, 10),
rank100 (Visual Dialog: 100 candidates of 16 tokens, 20 per decoder pass). The batch is global:
`--batch_size`, else `config.eval.batch_size`, else 64. Only memory is reported (no FLOPs).
"""

from __future__ import annotations

import time
from typing import Any

import flax.linen as nn
import jax
import ml_collections
from absl import flags

from ib_jax.contract.model import from_config_dict
from ib_jax.eval import program as program_lib
from ib_jax.models.instructblip import InstructBlip
from launch.aot_common import (
    DEFAULT_LENGTHS,
    PlannerError,
    load_planned_config,
    memory_of,
    parse_topology,
    topology_devices,
)
from launch.aot_report import Plan, first_lines

SETTINGS = {
    "captions": dict(num_beams=5, max_new_tokens=80, min_new_tokens=10, length_penalty=1.0),
    "qa": dict(num_beams=5, max_new_tokens=10, min_new_tokens=1, length_penalty=-1.0),
    "rank100": dict(num_candidates=100, candidate_len=16, chunk_size=20),
}
DEFAULT_BATCH = 64

# The README table: each released model, 5-beam caption generation (the longest decode) in bf16
# with parameters sharded over every chip (fsdp), on v5e slices from 4 chips up until it fits at
# the eval batch 64 (smaller batches on the smaller slices), and on v5p-8 (4 chips of 95 GiB).
# libtpu's compile-only devices cover neither v5e-1 nor v4 here (jax.make_mesh wants one device
# per chip). A row: (model, topology, eval batch).
_ROWS = [
    ("flant5xl", "v5e-4", 64),
    *[("flant5xxl", t, b) for t, b in (("v5e-4", 64), ("v5e-4", 16), ("v5e-8", 64))],
    *[("flant5xxl", t, b) for t, b in (("v5e-16", 64), ("v5p-8", 64))],
    *[("vicuna7b", t, b) for t, b in (("v5e-4", 16), ("v5e-8", 64), ("v5e-8", 32))],
    ("vicuna7b", "v5e-16", 64),
    *[("vicuna13b", t, b) for t, b in (("v5e-4", 16), ("v5e-8", 64), ("v5e-8", 16))],
    *[("vicuna13b", t, b) for t, b in (("v5e-16", 64), ("v5p-8", 64))],
]
TABLE_RUNS = [
    (
        f"configs/instructblip_{model}.py",
        topology,
        "1,-1,1",
        ("--mode=eval", "--eval_dtype=bfloat16", "--setting=captions", f"--batch_size={batch}"),
    )
    for model, topology, batch in _ROWS
]


def eval_config(
    config: str | ml_collections.ConfigDict,
    *,
    mesh: str | None = None,
    batch_size: int | None = None,
    eval_dtype: str | None = None,
) -> ml_collections.ConfigDict:
    """The run config with the planner's flags applied to its eval side (mesh, batch, dtypes)."""
    config = load_planned_config(config, mesh=mesh)
    evaluation = config.get("eval") or ml_collections.ConfigDict()
    config.eval = evaluation
    if mesh:  # the flag wins over an eval-specific mesh
        evaluation.mesh = None
    evaluation.batch_size = int(batch_size or evaluation.get("batch_size") or DEFAULT_BATCH)
    if eval_dtype:
        evaluation.dtype = evaluation.param_dtype = eval_dtype
    return config


def _abstract_batch(config: ml_collections.ConfigDict, program: Any) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp

    d, b = config.data, int(config.eval.batch_size)
    rows = program.batch_sharding
    ints = lambda n: jax.ShapeDtypeStruct((b, n), jnp.int32, sharding=rows)  # noqa: E731
    return {
        "pixel_values": jax.ShapeDtypeStruct(
            (b, d.image_size, d.image_size, 3), jnp.float32, sharding=rows
        ),
        "qformer_input_ids": ints(d.qformer_max_len),
        "qformer_attention_mask": ints(d.qformer_max_len),
        "input_ids": ints(d.text_max_len),
        "attention_mask": ints(d.text_max_len),
    }


def plan_eval(
    config: str | ml_collections.ConfigDict,
    topology_name: str,
    *,
    label: str | None = None,
    setting: str = "captions",
    mesh: str | None = None,
    batch_size: int | None = None,
    eval_dtype: str | None = None,
) -> Plan:
    """Compile the eval job's step for `config` on the slice `topology_name`; memory and advice."""
    if setting not in SETTINGS:
        raise PlannerError(f"--setting={setting!r}: expected one of {sorted(SETTINGS)}")
    topology = parse_topology(topology_name)
    label = label or (config if isinstance(config, str) else "config")
    config = eval_config(config, mesh=mesh, batch_size=batch_size, eval_dtype=eval_dtype)
    devices = topology_devices(topology)
    hbm = topology.chip.hbm_bytes // (len(devices) // topology.num_chips)
    eval_mesh, rules = program_lib.eval_mesh(config, devices)
    batch = int(config.eval.batch_size)
    shards = eval_mesh.shape["data"] * eval_mesh.shape["fsdp"]
    if batch % shards:
        raise PlannerError(
            f"eval batch {batch} does not split over data x fsdp = {shards} devices; "
            "change --batch_size or --mesh"
        )
    model = InstructBlip(program_lib.inference_config(from_config_dict(config.model), config.eval))
    result = Plan(
        config=label,
        topology=topology_name,
        num_chips=topology.num_chips,
        num_devices=len(devices),
        mesh=dict(eval_mesh.shape),
        batch_size=batch,
        grad_accum_steps=1,
        remat_policy="none",
        lengths={k: int(config.data[k]) for k in DEFAULT_LENGTHS},
        hbm_per_device=hbm,
        fits=False,
        compile_s=0.0,
        step_flops=0.0,
        mfu=0.0,
        step_time_s=0.0,
        mode="eval",
        setting=f"{setting}, {model.config.param_dtype} parameters, {model.config.dtype} compute",
    )
    start = time.perf_counter()
    with nn.logical_axis_rules(rules):
        abstract = program_lib.abstract_params(model, eval_mesh, rules)
    program = program_lib.InferenceProgram(model, abstract, eval_mesh, rules)
    inputs = _abstract_batch(config, program)
    s = SETTINGS[setting]
    if "num_candidates" in s:
        labels = jax.ShapeDtypeStruct(
            (batch, s["num_candidates"], s["candidate_len"]),
            jax.numpy.int32,
            sharding=program.batch_sharding,
        )
        lowered = program.lower_rank(inputs, labels, chunk_size=s["chunk_size"])
    else:
        lowered = program.lower_generate(inputs, **s)
    try:
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as e:
        message = str(e)
        if "RESOURCE_EXHAUSTED" not in message and "memory" not in message.lower():
            raise
        result.error, result.compile_s = first_lines(message, 6), time.perf_counter() - start
        result.advice = eval_advice(result, model.config.param_dtype)
        return result
    result.compile_s = time.perf_counter() - start
    memory = memory_of(compiled)
    result.memory, result.fits = memory, memory["total"] <= hbm
    result.advice = eval_advice(result, model.config.param_dtype)
    return result


def eval_advice(p: Plan, param_dtype: str) -> list[str]:
    """Which knob would help an eval step that does not fit."""
    if p.fits:
        return []
    n, fsdp, tensor = p.num_devices, p.mesh["fsdp"], p.mesh["tensor"]
    tips = []
    if param_dtype == "float32":
        tips.append("bf16 parameters halve them: --eval_dtype=bfloat16 (config.eval.param_dtype)")
    if fsdp * tensor < n:
        tips.append(f"shard the parameters over every chip: --mesh=1,{n},1")
    per_device = p.batch_size // (p.mesh["data"] * fsdp)
    if per_device > 1:
        tips.append(f"a smaller batch: --batch_size={p.batch_size // 2} (config.eval.batch_size)")
    if not tips:
        tips.append("the slice is too small for this model: use more chips")
    return tips


def define_flags() -> None:
    """The eval mode's own flags (`launch.aot.define_flags` calls this)."""
    flags.DEFINE_enum("mode", "train", ["train", "eval"], "plan the train step or the eval step")
    flags.DEFINE_enum("setting", "captions", sorted(SETTINGS), "eval mode: the step to compile")
    flags.DEFINE_string(
        "eval_dtype", None, "eval mode: parameter and compute dtype (default: config.eval's)"
    )


def plan_from_flags(flag_values: Any, label: str) -> Plan:
    """`plan_eval` with the planner's flags."""
    return plan_eval(
        flag_values.config,
        flag_values.topology,
        label=label,
        setting=flag_values.setting,
        mesh=flag_values.mesh,
        batch_size=flag_values.batch_size,
        eval_dtype=flag_values.eval_dtype,
    )
