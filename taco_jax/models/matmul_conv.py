"""A drop-in ``lax.conv_general_dilated`` that runs non-overlapping convolutions as matrix products.

A conv whose windows do not overlap (kernel ≤ stride in every spatial axis, no padding, no
dilation, one feature group) reads every input pixel at most once, so it is a gather of the
windows followed by one ``dot``: ResNet's 1×1 convs (two thirds of ResNet-50's layers, and its
stride-2 shortcuts), ConvNeXt's stem and down-sampling, a ViT's patch embedding. XLA on CPU runs
the backward pass of a 1×1 ``conv_general_dilated`` at 2.3–4.5x its forward time, the ``dot``'s
at about 1.5–2x (ResNet-50's layer shapes, batch 4, 2026-12-05): the recovery step spends most
of its time there. Results equal the convolution's to float32 rounding; every other conv goes
to ``lax.conv_general_dilated`` unchanged. Models pass it as ``nnx.Conv(...,
conv_general_dilated=conv_general_dilated)``; the layer's kernel, shapes and names are those of a
plain ``nnx.Conv``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax


def _channels_last(dn: lax.ConvDimensionNumbers, ndim: int) -> bool:
    spatial = tuple(range(1, ndim - 1))
    return (dn.lhs_spec == (0, ndim - 1, *spatial) and dn.out_spec == dn.lhs_spec
            and dn.rhs_spec == (ndim - 1, ndim - 2, *range(ndim - 2)))


def _unpadded(padding, n_spatial: int) -> bool:
    if isinstance(padding, str):
        return padding.upper() == "VALID"
    return len(padding) == n_spatial and all(tuple(p) == (0, 0) for p in padding)


def _windows(x: jax.Array, kernel: Sequence[int], strides: Sequence[int]) -> jax.Array:
    """(B, *S, C) → (B, *S_out, *kernel, C): each output pixel's window, windows disjoint."""
    for i, (k, s) in enumerate(zip(kernel, strides, strict=True)):
        axis = 1 + 2 * i  # each axis before it is already split in two
        n = x.shape[axis]
        out = (n - k) // s + 1
        x = lax.slice_in_dim(x, 0, min(n, out * s), axis=axis)
        if out * s > n:  # the tail past the last window: only dropped offsets ≥ k read it
            pad = [(0, 0)] * x.ndim
            pad[axis] = (0, out * s - n)
            x = jnp.pad(x, pad)
        x = x.reshape(*x.shape[:axis], out, s, *x.shape[axis + 1:])
        x = lax.slice_in_dim(x, 0, k, axis=axis + 1)
    n_sp = len(kernel)
    # (B, o1, k1, o2, k2, ..., C) → (B, o1, o2, ..., k1, k2, ..., C)
    outs = [1 + 2 * i for i in range(n_sp)]
    ks = [2 + 2 * i for i in range(n_sp)]
    return x.transpose(0, *outs, *ks, x.ndim - 1)


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                         padding, lhs_dilation: Sequence[int] | None = None,
                         rhs_dilation: Sequence[int] | None = None, dimension_numbers=None,
                         feature_group_count: int = 1, batch_group_count: int = 1,
                         precision=None, preferred_element_type=None, **kwargs) -> jax.Array:
    """``lax.conv_general_dilated``, as a ``dot`` over disjoint windows where that is exact."""
    ndim = lhs.ndim
    n_sp = ndim - 2
    kernel = rhs.shape[:n_sp]
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    strides = tuple(window_strides) if window_strides is not None else (1,) * n_sp
    plain = (feature_group_count == 1 and batch_group_count == 1 and not kwargs.get("out_sharding")
             and all(d == 1 for d in (lhs_dilation or (1,) * n_sp))
             and all(d == 1 for d in (rhs_dilation or (1,) * n_sp))
             and _channels_last(dn, ndim) and _unpadded(padding, n_sp)
             and all(k <= s for k, s in zip(kernel, strides, strict=True))
             and all(n >= k for n, k in zip(lhs.shape[1:-1], kernel, strict=True)))
    if not plain:
        return lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
            dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
            batch_group_count=batch_group_count, precision=precision,
            preferred_element_type=preferred_element_type, **kwargs)
    x = _windows(lhs, kernel, strides)
    x = x.reshape(*x.shape[:1 + n_sp], math.prod(x.shape[1 + n_sp:]))  # explicit: 0 images
    w = rhs.reshape(-1, rhs.shape[-1])
    return lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())), precision=precision,
                           preferred_element_type=preferred_element_type)
