"""Plain ``jnp`` reference for the block-sparse MLP ``y = fc2(gelu(fc1(x)))``."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..common import gelu
from ..sparse_linear.reference import block_row_ids, sparse_linear_reference
from .weights import SparseMLPWeights


def bsr_t_matmul_reference(h: jax.Array, wt) -> jax.Array:
    """h (T, H) @ Wt (H, D) with Wt in BSR -> (T, D) f32: each stored block (j, o) multiplies
    hidden chunk j and is scatter-added into output column-block o."""
    H, D = wt.shape
    bh, bo = wt.block_shape
    T = h.shape[0]
    if wt.nnz_blocks == 0:
        return jnp.zeros((T, D), jnp.float32)
    hb = h.reshape(T, H // bh, bh)[:, block_row_ids(wt), :]  # (T, nnz, bh)
    prod = jnp.einsum("tbh,bho->bto", hb, wt.data, preferred_element_type=jnp.float32,
                      precision=jax.lax.Precision.HIGHEST)  # (nnz, T, bo)
    y = jax.ops.segment_sum(prod, wt.indices, num_segments=D // bo)  # (D/bo, T, bo)
    return y.transpose(1, 0, 2).reshape(T, D)


def sparse_mlp_reference(x: jax.Array, p: SparseMLPWeights,
                         approximate_gelu: bool = False) -> jax.Array:
    """x (T, D) -> (T, D) in x.dtype; hidden = gelu(fc1) in f32, rounded to x.dtype before fc2
    (as the kernels feed it to the matrix unit)."""
    h = sparse_linear_reference(x, p.w1, p.b1, out_dtype=jnp.float32)
    h = gelu(h, approximate_gelu).astype(x.dtype)
    y = bsr_t_matmul_reference(h, p.w2t) + p.b2
    return y.astype(x.dtype)


def dense_mlp(x: jax.Array, w1: jax.Array, b1: jax.Array, w2: jax.Array, b2: jax.Array,
              precision=None, approximate_gelu: bool = False) -> jax.Array:
    """The dense MLP on (masked) dense W1 (H, D), W2 (D, H): what XLA runs without sparsity."""
    h = jnp.dot(x, w1.T, precision=precision, preferred_element_type=jnp.float32) + b1
    h = jax.nn.gelu(h, approximate=approximate_gelu).astype(x.dtype)  # as the models' Mlp
    y = jnp.dot(h, w2.T, precision=precision, preferred_element_type=jnp.float32) + b2
    return y.astype(x.dtype)
