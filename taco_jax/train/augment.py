"""Batched, jitted image augmentation for few-shot training (BUILD_NOTES.md, Design)."""

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


def mixup(key: jax.Array, images: jax.Array,
          alpha: float) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Mixup (Zhang et al. 2018): one λ ~ Beta(α, α) per batch, each image blended with the one
    at a random permutation. Returns (mixed images, λ, permutation (B,)); α = 0 is the identity.

    With distillation the teacher labels the mixed image itself, so mixup turns a few dozen
    images into a continuum of inputs on which to match the teacher (function matching).
    """
    b = images.shape[0]
    if alpha <= 0:
        return images, jnp.ones(()), jnp.arange(b)
    k_lam, k_perm = jax.random.split(key)
    lam = jax.random.beta(k_lam, alpha, alpha)
    perm = jax.random.permutation(k_perm, b)
    return lam * images + (1 - lam) * images[perm], lam, perm
