"""Preemption: SIGTERM or SIGINT -> every process saves at the same next step, then stops.

The trainer asks `Preemption.reached(step)` after every step. With several processes the answer
comes from JAX's preemption sync point (`multihost_utils.reached_preemption_sync_point`, backed by
the coordination service's preemption notifier, which Orbax's CheckpointManager and MaxText use
too), so no collective runs per step and the host keeps dispatching steps ahead.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Any

from jax._src import distributed as jax_distributed  # the client jax.distributed made
from jax.experimental import multihost_utils

logger = logging.getLogger(__name__)


class Preemption:
    """SIGTERM or SIGINT: every process saves at the same next step boundary, then returns.

    One process: a Python handler sets a flag. With a coordination service (jax.distributed),
    JAX's preemption sync manager catches SIGTERM (in C++, from `jax.distributed.initialize` on)
    and tells the service, which agrees in the background on a step every process will reach;
    `reached` reads that answer without a collective, so the host keeps dispatching steps ahead
    (a per-step all-gather waited for every step to finish). SIGINT is passed on to it as a
    SIGTERM. Orbax's CheckpointManager and MaxText ask the same sync point.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.requested = False
        self.coordinated = jax_distributed.global_state.client is not None
        # SIGTERM stays with JAX's notifier when there is one: a Python handler would replace it.
        handled = (signal.SIGINT,) if self.coordinated else self.SIGNALS
        self._previous = {signum: signal.signal(signum, self._handle) for signum in handled}

    def _handle(self, signum: int, frame: Any) -> None:
        del frame
        name = signal.Signals(signum).name
        if self.coordinated:
            logger.warning("%s received: passed on to JAX's preemption notifier as SIGTERM", name)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        logger.warning("%s received: saving a checkpoint and stopping", name)
        self.requested = True

    def reached(self, step: int) -> bool:
        """Whether to save and stop after `step`; call at every step (the sync manager counts
        them). Every process answers True at the same step."""
        if not self.coordinated:
            return self.requested
        if multihost_utils.reached_preemption_sync_point(step):
            logger.warning("preemption notice: every process saves at step %d and stops", step)
            return True
        return False

    def restore(self) -> None:
        """Reinstall the handlers that were there before."""
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
