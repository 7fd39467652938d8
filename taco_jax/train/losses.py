"""Losses for training and recovery (BUILD_NOTES.md, Design). Every loss is a batch mean."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy over the labelled rows. logits (B, C), labels (B,) int.

    A label < 0 marks an unlabelled example (e.g. a transfer image seen only through the
    teacher's logits): it adds nothing; a batch with no labelled row gives 0.
    """
    labelled = labels >= 0
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(labels, 0))
    return jnp.sum(jnp.where(labelled, ce, 0.0)) / jnp.maximum(jnp.sum(labelled), 1)


def kd_kl(student_logits: jax.Array, teacher_logits: jax.Array, temperature: float) -> jax.Array:
    """T² · KL(softmax(t/T) ‖ softmax(s/T)), mean over the batch (Hinton et al. scaling).

    The T² factor keeps gradient magnitudes comparable across temperatures.
    """
    t = jax.nn.log_softmax(teacher_logits / temperature, axis=-1)
    s = jax.nn.log_softmax(student_logits / temperature, axis=-1)
    kl = jnp.sum(jnp.exp(t) * (t - s), axis=-1)
    return temperature**2 * kl.mean()


def normalized_feature_mse(
    student_feats: Sequence[jax.Array], teacher_feats: Sequence[jax.Array]
) -> jax.Array:
    """SquareHead feature loss: Σ_layers ‖s − t‖² / ‖t‖², each layer per example, batch mean."""
    total = jnp.zeros(())
    for s, t in zip(student_feats, teacher_feats, strict=True):
        axes = tuple(range(1, t.ndim))
        err = jnp.sum((s - t) ** 2, axis=axes) / (jnp.sum(t**2, axis=axes) + 1e-12)
        total = total + err.mean()
    return total
