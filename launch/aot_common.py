"""What both compile planners share: TPU slices, their compile-only devices, the planned config.

`launch/aot.py` plans the train step, `launch/aot_eval.py` the eval job's generation step; both
parse a slice name (`parse_topology`), get its compile-only devices (`topology_devices`, needs
libtpu), fill the config's sizes (`load_planned_config`) and read XLA's memory analysis of what
they compiled (`memory_of`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re

import ml_collections

from ib_jax.configs_util import load_config
from launch.aot_report import GiB

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
