"""Mosaic TPU fused block-sparse MLP: ``y = fc2(gelu(fc1(x) + b1)) + b2`` in one kernel.

Grid = (token tiles, hidden chunks j, K1 + K2 steps). For one token tile the x tile (block_t, D)
and an f32 accumulator (block_t, D) stay in VMEM for the whole of j. At hidden chunk j the first
K1 steps stream the stored W1 blocks of block-row j and accumulate h_j = x @ W1[j]ᵀ in VMEM;
at step K1 the chunk gets its bias and GELU; the next K2 steps stream the stored W2ᵀ blocks of
row j and add h_j @ block into their output columns. The hidden activation lives only in VMEM.
K1/K2 are the longest block-rows of W1/W2ᵀ; shorter rows skip steps with ``pl.when`` and repeat
the last block index, so no DMA is issued for them. Indices are scalar-prefetch operands.

Hardware limits: dynamic lane slices of x and acc need D-blocks that are multiples of 128.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from ..common import gelu
from .weights import SparseMLPWeights, check_mlp_args


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """block_t: tokens per tile (multiple of 8)."""

    block_t: int = 256


def _pos(j, k, indptr_ref):
    """Position of the k-th stored block of row j, clamped into the row (see kernel_tpu of
    sparse_linear): repeated indices on skipped steps mean no new DMA."""
    last = jnp.maximum(indptr_ref[j + 1] - 1, 0)
    return jnp.minimum(indptr_ref[j] + k, last)


def _kernel(ip1, ix1, ip2, ix2, x_ref, w1_ref, b1_ref, w2_ref, b2_ref, o_ref, acc_ref, h_ref,
            a_ref, *, k1: int, bd: int, bo: int, approximate: bool):
    """x_ref (bt, D), w1_ref (bh, bd), b1_ref (1, bh), w2_ref (bh, bo), b2_ref (1, D),
    o_ref (bt, D); scratch acc (bt, D) f32, h (bt, bh) f32, a (bt, bh) x.dtype."""
    j, k = pl.program_id(1), pl.program_id(2)

    @pl.when((j == 0) & (k == 0))
    def _init_acc():
        acc_ref[...] = jnp.zeros_like(acc_ref)

    @pl.when(k == 0)
    def _init_h():
        h_ref[...] = jnp.zeros_like(h_ref)

    @pl.when(k < ip1[j + 1] - ip1[j])
    def _fc1():
        col = ix1[_pos(j, k, ip1)]
        x_blk = x_ref[:, pl.ds(pl.multiple_of(col * bd, bd), bd)]
        h_ref[...] += jax.lax.dot_general(x_blk, w1_ref[...], (((1,), (1,)), ((), ())),
                                          preferred_element_type=jnp.float32)

    @pl.when(k == k1)
    def _activate():
        a_ref[...] = gelu(h_ref[...] + b1_ref[...], approximate).astype(a_ref.dtype)

    @pl.when((k >= k1) & (k - k1 < ip2[j + 1] - ip2[j]))
    def _fc2():
        col = ix2[_pos(j, k - k1, ip2)]
        cols = pl.ds(pl.multiple_of(col * bo, bo), bo)
        acc_ref[:, cols] += jnp.dot(a_ref[...], w2_ref[...], preferred_element_type=jnp.float32)

    @pl.when((j == pl.num_programs(1) - 1) & (k == pl.num_programs(2) - 1))
    def _store():
        o_ref[...] = (acc_ref[...] + b2_ref[...]).astype(o_ref.dtype)


@functools.partial(jax.jit, static_argnames=("block_sizes", "approximate_gelu", "interpret"))
def sparse_mlp_tpu(x: jax.Array, p: SparseMLPWeights, *, block_sizes: BlockSizes = BlockSizes(),
                   approximate_gelu: bool = False,
                   interpret: bool | pltpu.InterpretParams = False) -> jax.Array:
    """x (T, D) -> fc2(gelu(fc1(x))) (T, D) in x.dtype; f32 accumulation; exact (erf) GELU
    unless ``approximate_gelu``."""
    check_mlp_args(x, p)
    T, D = x.shape
    H = p.w1.shape[0]
    bh, bd = p.w1.block_shape
    _, bo = p.w2t.block_shape
    b2 = p.b2.astype(jnp.float32).reshape(1, D)
    if p.w2t.nnz_blocks == 0:  # no path from the hidden layer to the output
        return jnp.broadcast_to(b2, (T, D)).astype(x.dtype)
    w1_data, w1_indices = p.w1.data, p.w1.indices
    if p.w1.nnz_blocks == 0:  # keep one block for the BlockSpec; never used (row counts are 0)
        w1_data, w1_indices = jnp.zeros((1, bh, bd), x.dtype), jnp.zeros((1,), jnp.int32)
    blocks = p.w1.block_shape + p.w2t.block_shape[1:]
    if not interpret and any(b % 128 for b in blocks):
        raise ValueError(f"Mosaic TPU needs weight blocks that are multiples of 128 (lane "
                         f"width), got {blocks}; smaller blocks run in interpret mode only")
    k1, k2 = p.w1.max_row_blocks, p.w2t.max_row_blocks
    bt = min(block_sizes.block_t, T)
    return pl.pallas_call(
        functools.partial(_kernel, k1=k1, bd=bd, bo=bo, approximate=approximate_gelu),
        out_shape=jax.ShapeDtypeStruct((T, D), x.dtype),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=4,  # w1 indptr/indices, w2t indptr/indices
            grid=(pl.cdiv(T, bt), H // bh, k1 + k2),
            in_specs=[
                # x: the token tile, all of D; constant over (j, k) so fetched once per tile.
                pl.BlockSpec((bt, D), lambda t, j, k, *_: (t, 0)),
                # W1: the k-th stored block of hidden row j during the fc1 phase (k < k1);
                # held at the row's last block afterwards (no refetch).
                pl.BlockSpec((None, bh, bd), lambda t, j, k, a, b, c, d: (
                    _pos(j, jnp.minimum(k, max(k1 - 1, 0)), a), 0, 0)),
                # b1: hidden chunk j.
                pl.BlockSpec((1, bh), lambda t, j, k, *_: (0, j)),
                # W2ᵀ: the (k - k1)-th stored block of hidden row j in the fc2 phase; its first
                # block is prefetched during the fc1 phase.
                pl.BlockSpec((None, bh, bo), lambda t, j, k, a, b, c, d: (
                    _pos(j, jnp.maximum(k - k1, 0), c), 0, 0)),
                pl.BlockSpec((1, D), lambda t, j, k, *_: (0, 0)),
            ],
            # One output tile per token tile, written once after the last hidden chunk.
            out_specs=pl.BlockSpec((bt, D), lambda t, j, k, *_: (t, 0)),
            scratch_shapes=[pltpu.VMEM((bt, D), jnp.float32), pltpu.VMEM((bt, bh), jnp.float32),
                            pltpu.VMEM((bt, bh), x.dtype)],
        ),
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "arbitrary", "arbitrary")),
        interpret=interpret,
    )(p.w1.indptr, w1_indices, p.w2t.indptr, p.w2t.indices, x, w1_data,
      p.b1.astype(jnp.float32).reshape(1, H), p.w2t.data, b2)
