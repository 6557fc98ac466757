"""Multi-host start-up: `jax.distributed.initialize` from the config or the environment."""

from __future__ import annotations

import logging
import os

import jax
import ml_collections

logger = logging.getLogger(__name__)


def initialize(config: ml_collections.ConfigDict) -> None:
    """Join the process group when the config or the environment describes one.

    `config.distributed` (coordinator_address, num_processes, process_id) wins; otherwise
    `IB_JAX_COORDINATOR`/`IB_JAX_NUM_PROCESSES`/`IB_JAX_PROCESS_ID`; otherwise on TPU pods and
    SLURM, jax's own auto-detection (`jax.distributed.initialize()` with no arguments).
    """
    dist = config.get("distributed") or {}
    address = dist.get("coordinator_address") or os.environ.get("IB_JAX_COORDINATOR")
    if address:
        num_processes = int(dist.get("num_processes") or os.environ["IB_JAX_NUM_PROCESSES"])
        process_id = int(dist.get("process_id") if dist.get("process_id") is not None
                         else os.environ["IB_JAX_PROCESS_ID"])
        jax.distributed.initialize(address, num_processes=num_processes, process_id=process_id)
    elif dist.get("auto") or "SLURM_JOB_ID" in os.environ or "TPU_WORKER_HOSTNAMES" in os.environ:
        jax.distributed.initialize()
    else:
        return
    logger.info("process %d of %d, %d local / %d global devices", jax.process_index(), jax.process_count(),
                jax.local_device_count(), jax.device_count())
