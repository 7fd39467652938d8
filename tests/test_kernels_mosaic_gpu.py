"""Mosaic GPU kernels (plgpu.kernel, emit_pipeline, wgmma) vs the masked dense computation.

On CPU they run in the Mosaic GPU interpreter (``interpret=True``), which simulates SMEM, TMA
copies, barriers and wgmma but not the lowering's layout/swizzle/register limits; its wgmma takes
no transposed SMEM view, so the interpreted cases use pre-transposed blocks. The ``gpu`` class
compiles for the device (both weight layouts) and is the test of the real lowering.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from taco_jax.kernels.problems import make_linear_problem, make_mlp_problem
from taco_jax.kernels.sparse_linear import kernel_gpu
from taco_jax.kernels.sparse_linear.reference import sparse_linear_reference
from taco_jax.kernels.sparse_mlp import kernel_gpu as mlp_gpu
from taco_jax.kernels.sparse_mlp.reference import dense_mlp
from taco_jax.kernels.testing import assert_close, has_platform


def masked_dense(p, bias=True):
    y = np.asarray(p.x, np.float32) @ np.asarray(p.w_dense, np.float32).T
    return y + np.asarray(p.bias, np.float32) if bias else y


# (tokens, d_out, d_in, block, sparsity, block_t)
CASES = [
    (37, 128, 64, 32, 0.5, 64),      # odd tokens (padded to a whole tile)
    (64, 64, 128, 16, 0.75, 64),     # 16-blocks: N = 16 wgmma
    (130, 256, 128, 64, 0.5, 128),   # M = 128 tiles, partial last tile
    (64, 256, 256, 128, 0.5, 64),    # 128-blocks
]


class _MosaicGpuLinear:
    INTERPRET = False
    TRANSPOSE_IN_SMEM = (True, False)

    def setup_method(self):
        if not self.INTERPRET and not has_platform("gpu"):
            pytest.skip("needs a GPU")

    def run(self, p, bias, block_t, tis):
        bs = kernel_gpu.BlockSizes(block_t=block_t, max_concurrent_steps=2,
                                   grid_tile_width=1, transpose_in_smem=tis)
        return kernel_gpu.sparse_linear_gpu(p.x, p.w, bias, block_sizes=bs,
                                            interpret=self.INTERPRET)

    @pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}x{c[2]}->{c[1]}b{c[3]}")
    def test_shapes(self, case):
        T, N, K, b, s, bt = case
        p = make_linear_problem(T, N, K, (b, b), s, jnp.bfloat16, seed=T)
        for tis in self.TRANSPOSE_IN_SMEM:
            y = self.run(p, p.bias, bt, tis)
            assert y.shape == (T, N) and y.dtype == jnp.bfloat16
            assert_close(y, masked_dense(p), jnp.bfloat16, self.INTERPRET)
            assert_close(y, sparse_linear_reference(p.x, p.w, p.bias), jnp.bfloat16,
                         self.INTERPRET)

    def test_empty_rows_single_block_no_bias(self):
        mask = np.zeros((4, 4), bool)
        mask[2, 1] = True  # one stored block; rows 0, 1, 3 empty (zero-trip pipelines)
        p = make_linear_problem(64, 64, 64, (16, 16), 0.0, jnp.bfloat16, block_mask=mask)
        for tis in self.TRANSPOSE_IN_SMEM:
            y = self.run(p, None, 64, tis)
            assert_close(y, masked_dense(p, bias=False), jnp.bfloat16, self.INTERPRET)

    def test_rejects_f32(self):
        p = make_linear_problem(8, 64, 64, (16, 16), 0.5, jnp.float32)
        with pytest.raises(ValueError, match="use kernel_triton for float32"):
            self.run(p, p.bias, 64, False)


@pytest.mark.gpu
class TestMosaicGpuLinear(_MosaicGpuLinear):
    """Compiled for the GPU (Hopper): both weight layouts."""


class TestMosaicGpuLinearInterpret(_MosaicGpuLinear):
    INTERPRET = True
    TRANSPOSE_IN_SMEM = (False,)


def masked_dense_mlp(m):
    f = lambda a: a.astype(jnp.float32)
    return dense_mlp(f(m.x), f(m.w1), m.b1, f(m.w2), m.b2, precision=jax.lax.Precision.HIGHEST)


class _MosaicGpuMLP:
    INTERPRET = False

    def setup_method(self):
        if not self.INTERPRET and not has_platform("gpu"):
            pytest.skip("needs a GPU")

    def run(self, m, block_t=64, **kw):
        return mlp_gpu.sparse_mlp_gpu(m.x, m.weights, mlp_gpu.build_schedule(m.weights),
                                      block_sizes=mlp_gpu.BlockSizes(block_t, 2),
                                      interpret=self.INTERPRET, **kw)

    @pytest.mark.parametrize("case", [(24, 768, 3072, 64, 0.9, 64), (70, 128, 256, 32, 0.5, 128)],
                             ids=["vit_b_mlp", "odd_tokens_bt128"])
    def test_shapes(self, case):
        T, D, H, b, s, bt = case
        m = make_mlp_problem(T, D, H, (b, b), s, jnp.bfloat16, seed=T)
        y = self.run(m, bt)
        assert y.shape == (T, D) and y.dtype == jnp.bfloat16
        assert_close(y, masked_dense_mlp(m), jnp.bfloat16, self.INTERPRET)

    @pytest.mark.parametrize("edge", ["empty_rows", "fc1_zero", "fc2_zero"])
    def test_edges(self, edge):
        rng = np.random.default_rng(2)
        m1, m2 = rng.random((8, 4)) < 0.5, rng.random((4, 8)) < 0.5
        if edge == "empty_rows":  # chunk 1 has no fc1 block but feeds every output: gelu(b1)
            m1[1] = m1[5] = False
            m2[:, 1] = True
        elif edge == "fc1_zero":
            m1[:] = False
        else:
            m2[:] = False
        m = make_mlp_problem(19, 64, 128, (16, 16), 0.0, jnp.bfloat16, masks=(m1, m2))
        assert_close(self.run(m), masked_dense_mlp(m), jnp.bfloat16, self.INTERPRET)

    def test_rejects(self):
        m = make_mlp_problem(8, 64, 128, (32, 16), 0.5, jnp.bfloat16)
        with pytest.raises(ValueError, match="needs square blocks"):
            self.run(m)


@pytest.mark.gpu
class TestMosaicGpuMLP(_MosaicGpuMLP):
    """Compiled for the GPU (Hopper)."""


class TestMosaicGpuMLPInterpret(_MosaicGpuMLP):
    INTERPRET = True
