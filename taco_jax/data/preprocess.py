"""Device-side image preparation: uint8 pixels -> the float inputs a model was trained on."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx


def for_model(model: nnx.Module) -> Callable[[jax.Array], jax.Array]:
    """uint8 (B, H, W, C) images already at the model's input size -> the normalised float32
    input of its stored eval transform (``model.preprocess``); jit-friendly."""
    transform = model.preprocess

    def normalize(x: jax.Array) -> jax.Array:
        return transform.normalize(x.astype(jnp.float32) / 255.0)

    return normalize
