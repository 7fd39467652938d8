"""Pallas GPU block-sparse linear through the Triton lowering: ``y = x @ Wᵀ (+ b)``.

One program per (token tile, block-row of W). It loops over exactly the stored blocks of its
block-row (a data-dependent trip count read from ``indptr``), loads the matching x column-block
and the weight block from global memory and accumulates ``x_blk @ w_blkᵀ`` in f32 registers.

The Triton lowering is deprecated from JAX 0.11 but still ships (selected by passing
``pallas.triton.CompilerParams``); Triton needs power-of-two tiles >= 16 for ``tl.dot``, so
r, c, block_t in {16, 32, 64, 128}. f32 inputs use TF32 on the tensor cores, as XLA's default.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from ..bsr import BSR
from ..common import check_linear_args, pad_rows, row_bias


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tiles of the Triton kernel: block_t tokens per program; Triton warps and stages."""

    block_t: int = 64
    num_warps: int = 4
    num_stages: int = 3


def _kernel(indptr_ref, indices_ref, x_ref, w_ref, b_ref, o_ref, *, block_t: int, c: int):
    """x_ref (T, d_in) and w_ref (nnz, r, c) whole in GMEM; o_ref/b_ref: this program's tile."""
    t, i = pl.program_id(0), pl.program_id(1)
    start, end = indptr_ref[i], indptr_ref[i + 1]
    rows = pl.ds(pl.multiple_of(t * block_t, block_t), block_t)

    def body(p, acc):
        col = indices_ref[p]
        x_blk = x_ref[rows, pl.ds(pl.multiple_of(col * c, c), c)]  # (block_t, c)
        w_blk = w_ref[p]  # (r, c)
        return acc + pl.dot(x_blk, w_blk, trans_b=True).astype(jnp.float32)

    acc = jax.lax.fori_loop(start, end, body, jnp.zeros(o_ref.shape, jnp.float32))
    o_ref[...] = (acc + b_ref[...]).astype(o_ref.dtype)


@functools.partial(jax.jit, static_argnames=("block_sizes", "interpret", "out_dtype"))
def sparse_linear_triton(x: jax.Array, w: BSR, bias: jax.Array | None = None, *,
                         block_sizes: BlockSizes = BlockSizes(), out_dtype=None,
                         interpret: bool = False) -> jax.Array:
    """x (T, d_in), W BSR (d_out, d_in), bias (d_out,) -> (T, d_out) in out_dtype (x.dtype)."""
    check_linear_args(x, w, bias)
    T = x.shape[0]
    d_out, _ = w.shape
    r, c = w.block_shape
    out_dtype = out_dtype or x.dtype
    b2 = row_bias(bias, d_out)
    if w.nnz_blocks == 0:
        return jnp.broadcast_to(b2, (T, d_out)).astype(out_dtype)
    bt = block_sizes.block_t
    xp = pad_rows(x, bt)  # whole token tiles: every load in the loop is in bounds
    whole = pl.BlockSpec()  # the whole array (a GMEM pointer), indexed inside the kernel
    y = pl.pallas_call(
        functools.partial(_kernel, block_t=bt, c=c),
        out_shape=jax.ShapeDtypeStruct((xp.shape[0], d_out), out_dtype),
        grid=(xp.shape[0] // bt, w.n_block_rows),
        in_specs=[whole, whole, whole, whole,
                  # bias: the r outputs of block-row i.
                  pl.BlockSpec((1, r), lambda t, i: (0, i))],
        # one output tile per program: token tile t, block-row i.
        out_specs=pl.BlockSpec((bt, r), lambda t, i: (t, i)),
        compiler_params=pltriton.CompilerParams(
            num_warps=block_sizes.num_warps, num_stages=block_sizes.num_stages),
        interpret=interpret,
    )(w.indptr, w.indices, xp, w.data, b2)
    return y[:T] if xp.shape[0] != T else y
