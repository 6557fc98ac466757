"""Token log-probabilities and cross-entropy over labels, shared by the composition, the language
models and candidate ranking.

Labels follow torch's convention (and so the reference's): `IGNORE_INDEX` (-100) marks positions
that carry no loss. Log-softmax runs in float32 whatever the compute dtype, as HF upcasts logits
before its loss.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ib_jax.contract.batch import IGNORE_INDEX

Array = jax.Array


def token_log_probs(logits: Array, labels: Array) -> Array:
    """log p(label) per position: logits [..., T, V], labels [..., T] -> [..., T] float32, 0 where
    the label is IGNORE_INDEX."""
    valid = labels != IGNORE_INDEX
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(log_probs, jnp.where(valid, labels, 0)[..., None], axis=-1)
    return jnp.where(valid, picked[..., 0], 0.0)


def cross_entropy(logits: Array, labels: Array) -> tuple[Array, Array]:
    """Summed token cross-entropy and the number of scored tokens.

    logits [..., T, V], labels [..., T] -> (sum of -log p(label) over labels != IGNORE_INDEX, count),
    both scalars. The mean is `sum / max(count, 1)`; the pair is returned so that callers can
    average over several batches (or devices) exactly.
    """
    valid = labels != IGNORE_INDEX
    return -jnp.sum(token_log_probs(logits, labels)), jnp.sum(valid)


def mean_cross_entropy(logits: Array, labels: Array) -> Array:
    """Token-mean cross-entropy over labels != IGNORE_INDEX (0 when there are none). -> scalar"""
    total, count = cross_entropy(logits, labels)
    return total / jnp.maximum(count, 1)
