"""The paper's optimization: AdamW(0.9, 0.999), weight decay 0.05 except biases and norms, linear
warmup from `warmup_init_lr` to `learning_rate`, then cosine to `end_learning_rate`."""

from __future__ import annotations

from typing import Any

import optax
from flax import traverse_util

from ib_jax.contract.config import TrainConfig


def learning_rate_schedule(train: TrainConfig) -> optax.Schedule:
    """Step (0-based) -> learning rate: linear warmup over `warmup_steps`, then cosine decay to
    `end_learning_rate` at `num_steps` (both from `config.train`)."""
    # max(., 1): a zero-length warmup or decay would divide by zero inside optax.
    warmup = optax.linear_schedule(
        train.warmup_init_lr, train.learning_rate, max(train.warmup_steps, 1)
    )
    decay = optax.cosine_decay_schedule(
        train.learning_rate,
        max(train.num_steps - train.warmup_steps, 1),
        alpha=train.end_learning_rate / train.learning_rate,
    )
    return optax.join_schedules([warmup, decay], [train.warmup_steps])


def decay_mask(params: Any) -> Any:
    """True where weight decay applies: kernels, embeddings, query tokens; not biases or norm scales."""
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({path: path[-1] not in ("bias", "scale") for path in flat})


def make_optimizer(train: TrainConfig) -> optax.GradientTransformation:
    """AdamW with the schedule and decay mask above; global-norm clipping first when
    `grad_clip_norm` > 0 (the paper does not clip; the demo does)."""
    parts = []
    if train.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(train.grad_clip_norm))
    parts.append(
        optax.adamw(
            learning_rate_schedule(train),
            b1=train.b1,
            b2=train.b2,
            weight_decay=train.weight_decay,
            mask=decay_mask,
        )
    )
    return optax.chain(*parts)
