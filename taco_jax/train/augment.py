"""Batched, jitted image augmentation for few-shot training (DESIGN.md §3)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

AUGMENTATIONS = ("none", "shift", "shift_flip")


def validate(name: str) -> str:
    if name not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {name!r}; allowed: {', '.join(AUGMENTATIONS)}")
    return name


def augment(key: jax.Array, images: jax.Array, name: str, max_shift: int = 3) -> jax.Array:
    """Augment a batch (B, H, W, C): random translation by up to ``max_shift`` pixels
    (zero padding, as a padded random crop) and, for ``shift_flip``, a random horizontal flip."""
    if name == "none":
        return images
    b, h, w, _ = images.shape
    k_shift, k_flip = jax.random.split(key)
    padded = jnp.pad(images, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)))
    offsets = jax.random.randint(k_shift, (b, 2), 0, 2 * max_shift + 1)

    def crop(img, off):
        return jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, img.shape[-1]))

    out = jax.vmap(crop)(padded, offsets)
    if name == "shift_flip":
        flip = jax.random.bernoulli(k_flip, 0.5, (b, 1, 1, 1))
        out = jnp.where(flip, out[:, :, ::-1], out)
    return out
