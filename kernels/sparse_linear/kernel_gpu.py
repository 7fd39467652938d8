"""Mosaic GPU (Pallas's default GPU lowering) block-sparse linear: ``y = x @ Wᵀ (+ b)``.

Modelled on jax's ``pallas/ops/gpu/ragged_dot_mgpu.py``. A persistent kernel (one CTA per SM)
walks the output tiles (token tile t, block-row i of W) with ``plgpu.nd_loop``. For each tile,
``plgpu.emit_pipeline`` with a data-dependent trip count (the row's stored-block count from
``indptr``) streams, by TMA into swizzled SMEM, the x column-block named by ``indices`` and the
weight block, and issues ``wgmma`` into an f32 register accumulator. The weight is the N operand
(acc (block_t, r) += x_blk (block_t, c) @ w_blkᵀ), so small blocks stay legal for wgmma (M = 64
or 128 tokens, N = r <= 256, K = c). The epilogue casts,
adds the bias (in the output dtype) in SMEM and TMA-stores the tile.

Hopper (sm_90a) and bf16/f16 only (f32 inputs: use the Triton kernel). r, c in {16, 32, 64, 128}.
Written for jax 0.10.x/0.11.x ``plgpu`` APIs; verified by lowering and the CPU interpreter only
until the device check (``bash kernels/device_check.sh``) runs it on a GPU.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from ..bsr import BSR
from ..common import check_linear_args, pad_rows, row_bias


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """block_t: tokens per output tile (64 or 128: the wgmma M); max_concurrent_steps: depth of
    the TMA pipeline (SMEM slots per operand); grid_tile_width: planar-snake width over the
    (token tile, block-row) grid, for L2 reuse of x tiles; transpose_in_smem: feed the (r, c)
    weight blocks to wgmma as a transposed SMEM view (no extra pass; the ragged_dot
    ``transpose_rhs`` path) instead of transposing the blocks to (c, r) in HBM first (one pass
    over the kept weights per call; the only form the CPU interpreter's wgmma accepts)."""

    block_t: int = 128
    max_concurrent_steps: int = 3
    grid_tile_width: int = 4
    transpose_in_smem: bool = True


def num_sms() -> int:
    """SM count of the default GPU (132 on an H100 SXM)."""
    return getattr(jax.devices()[0], "core_count", 132) or 132


def interpret_params(interpret):
    """``interpret=True`` -> the Mosaic GPU interpreter's params (it simulates SMEM, TMA, barriers
    and wgmma on CPU; jax >= 0.10 keeps it under ``jax._src``); False/params pass through."""
    if interpret is not True:
        return interpret
    try:
        from jax._src.pallas.mosaic_gpu.interpret.params import InterpretGPUParams
    except ImportError as e:  # pragma: no cover - depends on the jax version
        raise NotImplementedError(f"this jax {jax.__version__} has no Mosaic GPU interpreter"
                                  ) from e
    return InterpretGPUParams()


def _swizzle_transforms(minor: int, dtype) -> tuple:
    """Tiling + swizzle so a (rows, minor) SMEM tile is a legal wgmma operand."""
    swizzle = plgpu.find_swizzle(minor * jnp.dtype(dtype).itemsize * 8)
    elems = swizzle // jnp.dtype(dtype).itemsize
    return (plgpu.TilingTransform((8, elems)), plgpu.SwizzleTransform(swizzle))


@functools.partial(jax.jit, static_argnames=("block_sizes", "out_dtype", "interpret"))
def sparse_linear_gpu(x: jax.Array, w: BSR, bias: jax.Array | None = None, *,
                      block_sizes: BlockSizes = BlockSizes(), out_dtype=None,
                      interpret: bool = False) -> jax.Array:
    """x (T, d_in) bf16, W BSR (d_out, d_in), bias (d_out,) -> (T, d_out) in out_dtype (x.dtype).

    ``interpret=True`` runs the Mosaic GPU interpreter on CPU; its wgmma does not take
    transposed SMEM views, so use ``BlockSizes(transpose_in_smem=False)`` there.
    """
    check_linear_args(x, w, bias)
    if jnp.dtype(x.dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        raise ValueError(f"the Mosaic GPU kernel takes bfloat16/float16 inputs, got {x.dtype}; "
                         f"use kernel_triton for float32")
    T = x.shape[0]
    d_out = w.shape[0]
    r, c = w.block_shape
    bt = block_sizes.block_t
    if bt not in (64, 128):
        raise ValueError(f"block_t must be 64 or 128 (wgmma M), got {bt}")
    out_dtype = out_dtype or x.dtype
    b2 = row_bias(bias, d_out)
    if w.nnz_blocks == 0:
        return jnp.broadcast_to(b2, (T, d_out)).astype(out_dtype)
    xp = pad_rows(x, bt)  # whole token tiles: TMA boxes never cross the end of x or y
    m_iters, n_iters = xp.shape[0] // bt, w.n_block_rows
    tis = block_sizes.transpose_in_smem
    if tis:  # block p = rows [p*r, (p+1)*r) of w2d, fed to wgmma as a transposed view
        w2d, w_block = w.data.reshape(w.nnz_blocks * r, c), (r, c)
    else:  # blocks pre-transposed to (c, r): the plain (K, N) wgmma B operand
        w2d, w_block = jnp.swapaxes(w.data, 1, 2).reshape(w.nnz_blocks * c, r), (c, r)
    x_tf = _swizzle_transforms(c, x.dtype)
    w_tf = _swizzle_transforms(w_block[1], x.dtype)
    o_tf = _swizzle_transforms(r, out_dtype)
    has_bias = bias is not None
    # One token tile of bias rows, in the output dtype (the epilogue adds it in SMEM).
    b_tile = jnp.broadcast_to(b2, (bt, d_out)).astype(out_dtype)

    def body(indptr_gmem, indices_gmem, x_gmem, w_gmem, b_gmem, o_gmem):
        @plgpu.nd_loop((m_iters * n_iters,), collective_axes="sm")
        def _tile_loop(info: plgpu.NDLoopInfo):
            # Snake over (token tile, block-row) so neighbouring CTAs share x tiles in L2.
            ti, i = plgpu.planar_snake(info.index[0], (m_iters, n_iters), 1,
                                       block_sizes.grid_tile_width)
            start = indptr_gmem[i]
            count = indptr_gmem[i + 1] - start

            def acc_scope(acc_ref):
                plgpu.emit_pipeline(
                    lambda _, x_smem, w_smem: plgpu.wgmma(
                        acc_ref, x_smem, plgpu.transpose_ref(w_smem, (1, 0)) if tis else w_smem),
                    grid=(count,),  # data-dependent: only the stored blocks of row i
                    in_specs=[
                        # x: token tile ti, the block-column of the k-th stored block.
                        plgpu.BlockSpec((bt, c), lambda k: (ti, indices_gmem[start + k]),
                                        transforms=x_tf, delay_release=1),
                        # W: the k-th stored block of row i (block p of w2d).
                        plgpu.BlockSpec(w_block, lambda k: (start + k, 0),
                                        transforms=w_tf, delay_release=1),
                    ],
                    max_concurrent_steps=block_sizes.max_concurrent_steps,
                )(x_gmem, w_gmem)
                return acc_ref[...]

            acc = pl.run_scoped(acc_scope, plgpu.ACC((bt, r), jnp.float32))
            acc = acc.astype(out_dtype)

            # Epilogue as hopper_matmul_mgpu's "C" path: TMA the bias tile into the output SMEM
            # tile, add the accumulator there, TMA the tile out.
            @functools.partial(pl.run_scoped,
                               o_smem=plgpu.SMEM((bt, r), out_dtype, transforms=o_tf),
                               bar=plgpu.Barrier(num_barriers=1))
            def _store(o_smem, bar):
                if has_bias:
                    plgpu.copy_gmem_to_smem(b_gmem.at[:, pl.ds(i * r, r)], o_smem, bar)
                    plgpu.barrier_wait(bar)
                    o_smem[...] += acc
                else:
                    o_smem[...] = acc
                plgpu.commit_smem()
                plgpu.copy_smem_to_gmem(o_smem, o_gmem.at[pl.ds(ti * bt, bt), pl.ds(i * r, r)])
                plgpu.wait_smem_to_gmem(0, wait_read_only=True)

    kernel = plgpu.kernel(
        body,
        out_type=jax.ShapeDtypeStruct((xp.shape[0], d_out), out_dtype),
        grid=(num_sms() if not interpret else 2,),
        grid_names=("sm",),
        compiler_params=plgpu.CompilerParams(
            lowering_semantics=plgpu.LoweringSemantics.Warpgroup),
        **({"interpret": interpret_params(interpret)} if interpret else {}),
    )
    y = kernel(w.indptr, w.indices, xp, w2d, b_tile)
    return y[:T] if xp.shape[0] != T else y
