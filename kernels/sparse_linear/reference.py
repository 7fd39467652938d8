"""Plain ``jnp`` reference for the block-sparse linear ``y = x @ Wᵀ (+ b)``."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..bsr import BSR


def block_row_ids(w: BSR) -> jax.Array:
    """(nnz,) int32 block-row of each stored block, from ``indptr``."""
    return (jnp.searchsorted(w.indptr, jnp.arange(w.nnz_blocks, dtype=jnp.int32), side="right")
            - 1).astype(jnp.int32)


def sparse_linear_reference(x: jax.Array, w: BSR, bias: jax.Array | None = None,
                            out_dtype=None) -> jax.Array:
    """x (T, d_in), W BSR (d_out, d_in), bias (d_out,) -> y (T, d_out) in ``out_dtype``
    (default x.dtype), f32 accumulation. Gathers the x column-blocks each stored block needs,
    multiplies block by block and segment-sums the products into their output block-rows."""
    d_out, d_in = w.shape
    r, c = w.block_shape
    T = x.shape[0]
    if x.shape != (T, d_in):
        raise ValueError(f"x must have shape (tokens, {d_in}), got {x.shape}")
    out_dtype = out_dtype or x.dtype
    if w.nnz_blocks == 0:
        y = jnp.zeros((T, d_out), jnp.float32)
    else:
        xb = x.reshape(T, d_in // c, c)[:, w.indices, :]  # (T, nnz, c)
        prod = jnp.einsum("tbc,brc->btr", xb, w.data.astype(x.dtype),
                          preferred_element_type=jnp.float32,
                          precision=jax.lax.Precision.HIGHEST)  # (nnz, T, r)
        y = jax.ops.segment_sum(prod, block_row_ids(w), num_segments=d_out // r)  # (nbr, T, r)
        y = y.transpose(1, 0, 2).reshape(T, d_out)
    if bias is not None:
        y = y + bias.astype(jnp.float32)
    return y.astype(out_dtype)
