"""Linear and conv layers as matrices: the solver's view ``W`` (G, d_out/G, d_in/G) and inputs.

A ``nnx.Linear`` (kernel (d_in, d_out)) is ``W = kernelᵀ`` with one group. A ``nnx.Conv`` (kernel
HWIO, ``feature_group_count`` G) is, per group g, the linear map over unfolded input patches
``W_g`` (O/G, I·kh·kw) with columns ordered channel-major (c, h, w), matching
``lax.conv_general_dilated_patches``. Depthwise convs are G = C groups of one row each.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax


def groups(layer: nnx.Module) -> int:
    return int(getattr(layer, "feature_group_count", 1)) if isinstance(layer, nnx.Conv) else 1


def weight_matrix(kernel: jax.Array, n_groups: int = 1) -> jax.Array:
    """Kernel (d_in, d_out) or HWIO -> W (G, d_out/G, d_in_per_group·kh·kw)."""
    if kernel.ndim == 2:
        return kernel.T[None]
    kh, kw, i, o = kernel.shape
    W = kernel.transpose(3, 2, 0, 1).reshape(o, i * kh * kw)
    return W.reshape(n_groups, o // n_groups, i * kh * kw)


def kernel_from_matrix(W: jax.Array, kernel_shape: Sequence[int]) -> jax.Array:
    """Inverse of ``weight_matrix``: W (G, rows, cols) -> kernel of ``kernel_shape``."""
    if len(kernel_shape) == 2:
        return W[0].T
    kh, kw, i, o = kernel_shape
    return W.reshape(o, i, kh, kw).transpose(2, 3, 1, 0)


def _pairs(v, n=2) -> tuple:
    return tuple(v) if isinstance(v, Sequence) else (v,) * n


def conv_padding(layer: nnx.Conv):
    """The layer's padding in the form ``conv_general_dilated_patches`` takes."""
    p = layer.padding
    if isinstance(p, str):
        if p.upper() not in ("SAME", "VALID"):
            raise ValueError(f"conv padding {p!r} is not supported for pruning; use SAME, VALID "
                             "or explicit pairs")
        return p.upper()
    if isinstance(p, int):
        return ((p, p), (p, p))
    return tuple((q, q) if isinstance(q, int) else tuple(q) for q in p)


def layer_inputs(layer: nnx.Module, x: jax.Array) -> jax.Array:
    """The layer's input as matrix columns: X (n, G, d_in/G) (conv: one row per output position)."""
    if isinstance(layer, nnx.Linear):
        return x.reshape(-1, 1, x.shape[-1])
    if any(d != 1 for d in _pairs(layer.input_dilation or 1)):
        raise ValueError("convs with input_dilation != 1 cannot be pruned")
    patches = lax.conv_general_dilated_patches(
        x, filter_shape=tuple(layer.kernel_size), window_strides=_pairs(layer.strides or 1),
        padding=conv_padding(layer), rhs_dilation=_pairs(layer.kernel_dilation or 1),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=lax.Precision.HIGHEST)
    G = groups(layer)
    return patches.reshape(-1, G, patches.shape[-1] // G)


def layer_matrix(layer: nnx.Module) -> jax.Array:
    return weight_matrix(jnp.asarray(layer.kernel.value), groups(layer))
