"""Pallas GPU (Triton lowering) fused block-sparse MLP: ``y = fc2(gelu(fc1(x) + b1)) + b2``.

One program per (token tile, output column group g). It walks the hidden chunks j; for each it
computes h_j = gelu(x @ W1[j]ᵀ + b1_j) in registers over the stored blocks of W1's block-row j,
then multiplies h_j by the stored blocks of W2ᵀ's row j whose output column lies in group g (a
contiguous run, located by ``group_ptr``). The output panel (block_t, D/G) is held in registers
as D/(G·bo) column accumulators (a static list); a block for output column o is added with a
select on o, since registers cannot be indexed dynamically. The hidden activation never touches
memory. Register use grows with block_t * D / G; ``out_groups`` G > 1 lowers it at the price of
recomputing fc1 per group (the autotuner picks). GELU's erf is a polynomial (no erf in Triton).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from ..common import gelu, pad_rows
from .weights import SparseMLPWeights, check_mlp_args


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """block_t tokens per program; out_groups: programs per token tile, each owning D/out_groups
    output columns (fewer registers per program, but fc1 is recomputed out_groups times);
    Triton warps and pipeline stages."""

    block_t: int = 32
    num_warps: int = 8
    num_stages: int = 2
    out_groups: int = 1


def group_ptr(w2t_indptr: jax.Array, w2t_indices: jax.Array, cols_per_group: int,
              groups: int) -> jax.Array:
    """(H/bh * groups + 1,) int32: the stored W2ᵀ blocks of hidden row j whose output column
    falls in group g are data[gptr[j*G+g] : gptr[j*G+g+1]] (indices are sorted within a row, so
    the key row*G + group is sorted too)."""
    nnz = w2t_indices.shape[0]
    rows = jnp.searchsorted(w2t_indptr, jnp.arange(nnz, dtype=jnp.int32), side="right") - 1
    key = rows * groups + w2t_indices // cols_per_group
    n_rows = w2t_indptr.shape[0] - 1
    return jnp.searchsorted(key, jnp.arange(n_rows * groups + 1, dtype=jnp.int32),
                            side="left").astype(jnp.int32)


def _kernel(ip1, ix1, gp2, ix2, x_ref, w1_ref, b1_ref, w2_ref, b2_ref, o_ref, *,
            block_t: int, n_hidden: int, bh: int, bd: int, bo: int, groups: int,
            approximate: bool):
    """x_ref (T, D), w1_ref (nnz1, bh, bd), b1_ref (1, H), w2_ref (nnz2, bh, bo) whole in GMEM;
    b2_ref (1, D/G) and o_ref (block_t, D/G): this program's output columns."""
    t, g = pl.program_id(0), pl.program_id(1)
    rows = pl.ds(pl.multiple_of(t * block_t, block_t), block_t)
    n_out = o_ref.shape[1] // bo  # column blocks in this group
    first = g * n_out  # global column-block id of the group's first column

    def hidden_chunk(j, accs):
        def fc1(p, h):
            x_blk = x_ref[rows, pl.ds(pl.multiple_of(ix1[p] * bd, bd), bd)]
            return h + pl.dot(x_blk, w1_ref[p], trans_b=True).astype(jnp.float32)

        h = jax.lax.fori_loop(ip1[j], ip1[j + 1], fc1, jnp.zeros((block_t, bh), jnp.float32))
        b1 = b1_ref[:, pl.ds(pl.multiple_of(j * bh, bh), bh)]
        a = gelu(h + b1, approximate, polynomial_erf=True).astype(x_ref.dtype)

        def fc2(q, accs):
            prod = pl.dot(a, w2_ref[q]).astype(jnp.float32)  # (block_t, bo) for column ix2[q]
            o = ix2[q] - first
            return tuple(jnp.where(o == m, acc + prod, acc) for m, acc in enumerate(accs))

        k = j * groups + g
        return jax.lax.fori_loop(gp2[k], gp2[k + 1], fc2, accs)

    accs = tuple(jnp.zeros((block_t, bo), jnp.float32) for _ in range(n_out))
    accs = jax.lax.fori_loop(0, n_hidden, hidden_chunk, accs)
    for m, acc in enumerate(accs):
        cols = slice(m * bo, (m + 1) * bo)
        o_ref[:, cols] = (acc + b2_ref[:, cols]).astype(o_ref.dtype)


@functools.partial(jax.jit, static_argnames=("block_sizes", "approximate_gelu", "interpret"))
def sparse_mlp_triton(x: jax.Array, p: SparseMLPWeights, *,
                      block_sizes: BlockSizes = BlockSizes(), approximate_gelu: bool = False,
                      interpret: bool = False) -> jax.Array:
    """x (T, D) -> fc2(gelu(fc1(x))) (T, D) in x.dtype; f32 accumulation; exact (erf) GELU
    unless ``approximate_gelu``."""
    check_mlp_args(x, p)
    T, D = x.shape
    H = p.w1.shape[0]
    bh, bd = p.w1.block_shape
    _, bo = p.w2t.block_shape
    G = block_sizes.out_groups
    if (D // bo) % G:
        raise ValueError(f"out_groups={G} must divide the {D // bo} output column blocks")
    b2 = p.b2.astype(jnp.float32).reshape(1, D)
    if p.w2t.nnz_blocks == 0:
        return jnp.broadcast_to(b2, (T, D)).astype(x.dtype)
    w1_data, w1_indices = p.w1.data, p.w1.indices
    if p.w1.nnz_blocks == 0:  # keep one block so the refs are not empty; never read
        w1_data, w1_indices = jnp.zeros((1, bh, bd), x.dtype), jnp.zeros((1,), jnp.int32)
    bt = block_sizes.block_t
    dg = D // G
    xp = pad_rows(x, bt)
    gptr = group_ptr(p.w2t.indptr, p.w2t.indices, (D // bo) // G, G)
    whole = pl.BlockSpec()  # whole array in GMEM, indexed in the kernel
    y = pl.pallas_call(
        functools.partial(_kernel, block_t=bt, n_hidden=H // bh, bh=bh, bd=bd, bo=bo, groups=G,
                          approximate=approximate_gelu),
        out_shape=jax.ShapeDtypeStruct((xp.shape[0], D), x.dtype),
        grid=(xp.shape[0] // bt, G),
        in_specs=[whole] * 8 + [pl.BlockSpec((1, dg), lambda t, g: (0, g))],
        # token tile t, output column group g.
        out_specs=pl.BlockSpec((bt, dg), lambda t, g: (t, g)),
        compiler_params=pltriton.CompilerParams(
            num_warps=block_sizes.num_warps, num_stages=block_sizes.num_stages),
        interpret=interpret,
    )(p.w1.indptr, w1_indices, gptr, p.w2t.indices, xp, w1_data,
      p.b1.astype(jnp.float32).reshape(1, H), p.w2t.data, b2)
    return y[:T] if xp.shape[0] != T else y
