"""The training step: a pure function of (state, frozen params, batch), jitted with shardings.

Gradient accumulation splits the batch into `grad_accum_steps` micro-batches and scans over them,
so memory is that of one micro-batch; the update is the mean of the micro-batch gradients.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from ib_jax.contract.batch import TRAIN_KEYS
from ib_jax.models.instructblip import InstructBlip
from ib_jax.train.state import TrainState, merge_params


def loss_fn(
    model: InstructBlip,
    trainable: Any,
    frozen: Any,
    batch: dict[str, jax.Array],
    rng: jax.Array | None = None,
) -> jax.Array:
    """Mean cross-entropy of the batch's labels (scalar); gradients flow to `trainable` only.
    `rng`: the dropout key (only LoRA has dropout, `config.model.lora.dropout`)."""
    params = merge_params(trainable, frozen)
    rngs = None if rng is None else {"dropout": rng}
    out = model.apply({"params": params}, **{k: batch[k] for k in TRAIN_KEYS}, rngs=rngs)
    return out.loss


def make_train_step(
    model: InstructBlip, optimizer: optax.GradientTransformation, grad_accum_steps: int = 1
) -> Callable[[TrainState, Any, dict], tuple[TrainState, dict]]:
    """The step: (state, frozen, batch) -> (new state, {"loss", "grad_norm"}), to be jitted.

    Batch arrays are [B, ...] with B divisible by `grad_accum_steps`.
    """
    grad_fn = jax.value_and_grad(lambda t, f, b, r=None: loss_fn(model, t, f, b, r))
    lora = model.config.lora
    dropout = lora.rank > 0 and lora.dropout > 0

    def train_step(
        state: TrainState, frozen: Any, batch: dict[str, jax.Array]
    ) -> tuple[TrainState, dict]:
        """One optimizer update from the batch (or the mean of its micro-batches' gradients)."""
        # A function of the step alone, so a resumed run draws the same masks.
        rng = jax.random.fold_in(jax.random.key(0), state.step) if dropout else None
        if grad_accum_steps == 1:
            loss, grads = grad_fn(state.trainable, frozen, batch, rng)
        else:
            # [B, ...] -> [K, B / K, ...]: micro-batch k is the rows [k * B / K, (k + 1) * B / K).
            micro = jax.tree_util.tree_map(
                lambda x: x.reshape(
                    (grad_accum_steps, x.shape[0] // grad_accum_steps) + x.shape[1:]
                ),
                batch,
            )

            def accumulate(carry: tuple, micro_batch: dict) -> tuple[tuple, None]:
                """Add one micro-batch's (loss, grads) to the running sums."""
                key = None if rng is None else jax.random.fold_in(rng, micro_batch["index"])
                loss, grads = grad_fn(state.trainable, frozen, micro_batch["batch"], key)
                return jax.tree_util.tree_map(jnp.add, carry, (loss, grads)), None

            zeros = (
                jnp.zeros((), jnp.float32),
                jax.tree_util.tree_map(jnp.zeros_like, state.trainable),
            )
            xs = {"batch": micro, "index": jnp.arange(grad_accum_steps)}
            (loss, grads), _ = jax.lax.scan(accumulate, zeros, xs)
            loss, grads = jax.tree_util.tree_map(lambda x: x / grad_accum_steps, (loss, grads))
        updates, opt_state = optimizer.update(grads, state.opt_state, state.trainable)
        trainable = optax.apply_updates(state.trainable, updates)
        metrics = {"loss": loss, "grad_norm": optax.global_norm(grads)}
        return TrainState(step=state.step + 1, trainable=trainable, opt_state=opt_state), metrics

    return train_step
