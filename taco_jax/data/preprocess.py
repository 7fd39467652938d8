"""Device-side image normalisation: uint8 pixels -> the float inputs a model was trained on."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp


def normalizer(mean: Sequence[float], std: Sequence[float]) -> Callable[[jax.Array], jax.Array]:
    """x (B, H, W, C) uint8 -> (x / 255 − mean) / std as float32, per channel; jit-friendly."""
    mean_a = jnp.asarray(mean, jnp.float32)
    std_a = jnp.asarray(std, jnp.float32)
    if mean_a.shape != std_a.shape or jnp.any(std_a <= 0):
        raise ValueError(f"mean {tuple(mean)} and std {tuple(std)} must have the same length "
                         "and std must be > 0")

    def normalize(x: jax.Array) -> jax.Array:
        return (x.astype(jnp.float32) / 255.0 - mean_a) / std_a

    return normalize


def for_model(model) -> Callable[[jax.Array], jax.Array]:
    """The normaliser of a zoo model's stored eval transform (``model.preprocess``), for images
    already at the model's input size."""
    return normalizer(model.preprocess.mean, model.preprocess.std)
