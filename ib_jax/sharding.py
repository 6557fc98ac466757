"""Meshes, logical-axis rules and shardings, all from the config.

Modules name their parameter and activation axes (ib_jax/models/layers.py); `config.mesh` maps
them onto the three mesh axes `data`, `fsdp`, `tensor`. Batches are sharded over data x fsdp:
fsdp shards parameters and batch alike (ZeRO-3 style: each device gathers a layer's weights just
before using them), so growing it divides both memory and work; `data` only replicates
parameters; `tensor` splits heads, MLP and vocabulary within a layer (and needs the fastest links).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")


def mesh_shape(mesh_config: ml_collections.ConfigDict, num_devices: int) -> tuple[int, ...]:
    """Resolve the one -1 entry (if any) so the product equals the device count."""
    sizes = [int(mesh_config.shape[name]) for name in MESH_AXES]
    known = math.prod(s for s in sizes if s != -1)
    if sizes.count(-1) > 1:
        raise ValueError(
            f"config.mesh.shape may have one -1 entry, got {dict(zip(MESH_AXES, sizes))}"
        )
    if -1 in sizes:
        if num_devices % known:
            raise ValueError(
                f"{num_devices} devices cannot be split as {dict(zip(MESH_AXES, sizes))}"
            )
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ValueError(
            f"config.mesh.shape {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
            f"{num_devices} are available"
        )
    return tuple(sizes)


def make_mesh(mesh_config: ml_collections.ConfigDict, devices: list | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh over `devices` (default: all) shaped by `mesh_config.shape`."""
    devices = devices if devices is not None else jax.devices()
    # jax.make_mesh picks a device order that follows the hardware topology. Auto axes: the
    # shardings are constraints the compiler propagates, not part of the arrays' types.
    shape = mesh_shape(mesh_config, len(devices))
    return jax.make_mesh(
        shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices
    )


def axis_rules(mesh_config: ml_collections.ConfigDict) -> tuple[tuple[str, Any], ...]:
    """`mesh_config.axis_rules` as flax wants them: ((logical axis, mesh axis/axes/None), ...).

    Config files hold lists (JSON-able in checkpoints); flax needs tuples for multi-axis rules.
    """
    return tuple(
        (name, tuple(target) if isinstance(target, list) else target)
        for name, target in mesh_config.axis_rules
    )


@contextlib.contextmanager
def activate(mesh: Mesh, rules: tuple) -> Iterator[None]:
    """Mesh + logical rules for tracing: activation constraints resolve against both."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield


def logical_shardings(boxed_tree: Any, mesh: Mesh, rules: tuple) -> Any:
    """A tree of `nn.LogicallyPartitioned` (or plain) leaves -> NamedShardings (plain leaves replicate)."""
    specs = nn.get_partition_spec(boxed_tree)
    return nn.logical_to_mesh_sharding(specs, mesh, rules)


def unboxed(boxed_tree: Any) -> Any:
    """Values of `nn.Partitioned` leaves without applying sharding constraints (safe outside jit)."""
    return jax.tree_util.tree_map(
        lambda x: x.value if isinstance(x, nn.meta.AxisMetadata) else x,
        boxed_tree,
        is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata),
    )


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """An array [B, ...] of rank `ndim` split over data x fsdp on its first axis."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device of `mesh` (step counter, metrics)."""
    return NamedSharding(mesh, PartitionSpec())


def global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Process-local numpy batch -> global jax.Arrays sharded over data x fsdp.

    Each process passes its own [B / P, ...] rows; the global array is [B, ...], the processes'
    rows in process order (the mesh lists process 0's devices first).
    """
    return {
        key: jax.make_array_from_process_local_data(
            batch_sharding(mesh, np.ndim(value)), np.asarray(value)
        )
        for key, value in local_batch.items()
    }
