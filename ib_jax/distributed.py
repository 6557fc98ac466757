"""Multi-host start-up: `jax.distributed.initialize` from the config or the environment."""

from __future__ import annotations

import logging
import os

import jax
import ml_collections

from ib_jax.contract.config import DistributedConfig, build

logger = logging.getLogger(__name__)


def initialize(config: ml_collections.ConfigDict) -> None:
    """Join the process group when the config or the environment describes one.

    `config.distributed` (coordinator_address, num_processes, process_id) wins; otherwise
    `IB_JAX_COORDINATOR`/`IB_JAX_NUM_PROCESSES`/`IB_JAX_PROCESS_ID`; otherwise jax's own
    auto-detection (`jax.distributed.initialize()` with no arguments) when asked for
    (`config.distributed.auto` or `IB_JAX_DISTRIBUTED=auto`, set by launch/tpu_pod.py: a TPU VM
    shell has no environment variable that says it is one worker of a pod) or under SLURM.
    """
    dist = build(DistributedConfig, "distributed", config.get("distributed"))
    address = dist.coordinator_address or os.environ.get("IB_JAX_COORDINATOR")
    if address:
        num_processes = int(dist.num_processes or _required_env("IB_JAX_NUM_PROCESSES", address))
        process_id = int(
            dist.process_id
            if dist.process_id is not None
            else _required_env("IB_JAX_PROCESS_ID", address)
        )
        jax.distributed.initialize(address, num_processes=num_processes, process_id=process_id)
    elif (
        dist.auto
        or os.environ.get("IB_JAX_DISTRIBUTED") == "auto"
        or "SLURM_JOB_ID" in os.environ
        or "TPU_WORKER_HOSTNAMES" in os.environ
    ):
        jax.distributed.initialize()
    else:
        return
    logger.info(
        "process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )


def _required_env(name: str, address: str) -> str:
    if name not in os.environ:
        raise ValueError(
            f"coordinator {address} is set (config.distributed / IB_JAX_COORDINATOR) but {name} is "
            "not: every process needs IB_JAX_NUM_PROCESSES and its own IB_JAX_PROCESS_ID"
        )
    return os.environ[name]


def barrier(name: str, timeout_seconds: int = 1800) -> None:
    """Wait until every process reaches `name`, through the coordination service.

    Used before the first collective of a program: processes can finish compiling far apart
    (one slow host, a loaded machine), and XLA:CPU's Gloo set-up gives up after 30 s, whereas
    this barrier waits as long as it is told to.
    """
    if jax.process_count() == 1:
        return
    from jax._src import distributed as jax_distributed  # the client orbax's barriers use as well

    jax_distributed.global_state.client.wait_at_barrier(name, timeout_in_ms=timeout_seconds * 1000)
