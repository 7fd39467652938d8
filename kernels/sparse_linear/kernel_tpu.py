"""Mosaic TPU block-sparse linear: ``y = x @ Wᵀ (+ b)``, W in BSR.

The pattern of the Pallas TPU "block-sparse computation" tutorial: the BSR ``indptr`` and
``indices`` are scalar-prefetch operands (SMEM), so the index maps can read them to choose which
x column-block and which weight block to DMA at each grid step. Grid =
(block-rows of W, token tiles, max_row_blocks); the last axis walks the stored blocks of one
block-row and accumulates into an f32 VMEM scratch; steps past a short row's end are skipped
with ``pl.when`` and their index maps repeat the previous block, so no new DMA is issued.
Empty block-rows write zeros (+ bias).

Hardware limits (Mosaic TPU): the x block is (block_t, c) and the output block (block_t, r),
so r and c must be multiples of 128 on a real TPU; any block size works in interpret mode.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from ..bsr import BSR
from ..common import check_linear_args, row_bias


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tiles of the TPU kernel. block_t: tokens per output tile (multiple of 8)."""

    block_t: int = 256


def _kernel(indptr_ref, indices_ref, x_ref, w_ref, b_ref, o_ref, acc_ref):
    """One grid step: x_ref (block_t, c), w_ref (r, c), b_ref (1, r), o_ref (block_t, r)."""
    del indices_ref  # used by the index maps only
    i, k = pl.program_id(0), pl.program_id(2)

    @pl.when(k == 0)
    def _init():
        acc_ref[...] = jnp.zeros_like(acc_ref)

    @pl.when(k < indptr_ref[i + 1] - indptr_ref[i])
    def _accumulate():
        # x @ blockᵀ: contract the c axis of both (NT matmul, native on the MXU).
        acc_ref[...] += jax.lax.dot_general(
            x_ref[...], w_ref[...], (((1,), (1,)), ((), ())),
            preferred_element_type=jnp.float32)

    @pl.when(k == pl.num_programs(2) - 1)
    def _store():
        o_ref[...] = (acc_ref[...] + b_ref[...]).astype(o_ref.dtype)


def _block_pos(i, k, indptr_ref):
    """Position in ``data`` of the k-th block of block-row i, clamped to the row's last block
    (or the previous row's, or 0, for an empty row): a repeated index skips the DMA."""
    last = jnp.maximum(indptr_ref[i + 1] - 1, 0)
    return jnp.minimum(indptr_ref[i] + k, last)


@functools.partial(jax.jit, static_argnames=("block_sizes", "interpret", "out_dtype"))
def sparse_linear_tpu(x: jax.Array, w: BSR, bias: jax.Array | None = None, *,
                      block_sizes: BlockSizes = BlockSizes(), out_dtype=None,
                      interpret: bool | pltpu.InterpretParams = False) -> jax.Array:
    """x (T, d_in), W BSR (d_out, d_in), bias (d_out,) -> (T, d_out) in out_dtype (x.dtype)."""
    check_linear_args(x, w, bias)
    T = x.shape[0]
    d_out, _ = w.shape
    r, c = w.block_shape
    out_dtype = out_dtype or x.dtype
    b2 = row_bias(bias, d_out)
    if w.nnz_blocks == 0:  # nothing stored: the output is the bias alone
        return jnp.broadcast_to(b2, (T, d_out)).astype(out_dtype)
    if not interpret and any(b % 128 for b in (r, c)):
        raise ValueError(f"Mosaic TPU needs weight blocks that are multiples of 128 (lane "
                         f"width), got {(r, c)}; smaller blocks run in interpret mode only")
    bt = min(block_sizes.block_t, T)
    grid = (w.n_block_rows, pl.cdiv(T, bt), w.max_row_blocks)
    return pl.pallas_call(
        _kernel,
        out_shape=jax.ShapeDtypeStruct((T, d_out), out_dtype),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=2,  # indptr, indices -> SMEM, passed to every index map
            grid=grid,
            in_specs=[
                # x: token tile t, the block-column that the k-th stored block multiplies.
                pl.BlockSpec((bt, c), lambda i, t, k, ip, ix: (t, ix[_block_pos(i, k, ip)])),
                # W: the k-th stored block of block-row i (leading nnz axis squeezed).
                pl.BlockSpec((None, r, c), lambda i, t, k, ip, ix: (_block_pos(i, k, ip), 0, 0)),
                # bias: the r outputs of block-row i.
                pl.BlockSpec((1, r), lambda i, t, k, ip, ix: (0, i)),
            ],
            # Output tile (t, i) is revisited along k only: written once at the last k.
            out_specs=pl.BlockSpec((bt, r), lambda i, t, k, ip, ix: (t, i)),
            scratch_shapes=[pltpu.VMEM((bt, r), jnp.float32)],
        ),
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "arbitrary")),
        interpret=interpret,
    )(w.indptr, w.indices, x, w.data, b2)
