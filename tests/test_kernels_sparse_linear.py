"""Sparse linear kernels vs the jnp reference and the masked dense matmul.

Each kernel has a hardware class (skipped without its device) and an interpret twin that runs the
same cases on CPU. Mosaic GPU cases live in test_kernels_mosaic_gpu.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from taco_jax.kernels.bsr import BSR, bsr_to_dense
from taco_jax.kernels.problems import make_linear_problem
from taco_jax.kernels.sparse_linear import kernel_tpu, kernel_triton
from taco_jax.kernels.sparse_linear.reference import sparse_linear_reference
from taco_jax.kernels.testing import assert_close, has_platform

HIGHEST = jax.lax.Precision.HIGHEST


def masked_dense(x, w_dense, bias):
    """The independent check: one f32 jnp.dot on the masked dense weight."""
    y = jnp.dot(x.astype(jnp.float32), w_dense.astype(jnp.float32).T, precision=HIGHEST)
    return y + bias.astype(jnp.float32)


# (tokens, d_out, d_in, block, sparsity): ViT-B/16 linears at few tokens, odd token counts,
# rectangular blocks; the big token counts live in the slow sweep.
CASES = [
    (24, 3072, 768, (64, 64), 0.9),    # ViT-B fc1
    (24, 768, 3072, (64, 64), 0.9),    # ViT-B fc2
    (16, 2304, 768, (64, 64), 0.95),   # ViT-B qkv
    (37, 768, 768, (128, 128), 0.75),  # ViT-B proj, odd tokens, 128 blocks
    (40, 256, 384, (16, 16), 0.5),
    (33, 192, 256, (32, 32), 0.75),
    (20, 96, 128, (16, 32), 0.6),      # rectangular blocks
]
EDGE = ["all_zero_rows", "fully_dense", "single_block", "all_zero"]


class _SparseLinearCases:
    """Cases shared by every backend; subclasses set KERNEL, BLOCKS, PLATFORM, INTERPRET."""

    KERNEL = None
    BLOCKS = None  # BlockSizes factory: block_t -> BlockSizes
    PLATFORM = ""
    INTERPRET = False
    BLOCK_T = 32

    def setup_method(self):
        if not self.INTERPRET and not has_platform(self.PLATFORM):
            pytest.skip(f"needs a {self.PLATFORM}")

    def run(self, x: jax.Array, w: BSR, bias: jax.Array | None, block_t: int | None = None):
        bs = type(self).BLOCKS(block_t or self.BLOCK_T)
        return type(self).KERNEL(x, w, bias, block_sizes=bs, interpret=self.INTERPRET)

    def check(self, p, dtype, block_t=None):
        y = self.run(p.x, p.w, p.bias, block_t)
        assert y.shape == (p.x.shape[0], p.w.shape[0]) and y.dtype == p.x.dtype
        assert_close(y, sparse_linear_reference(p.x, p.w, p.bias), dtype, self.INTERPRET)
        assert_close(y, masked_dense(p.x, p.w_dense, p.bias), dtype, self.INTERPRET)

    @pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
    @pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}x{c[2]}->{c[1]}b{c[3][0]}")
    def test_shapes(self, case, dtype):
        tokens, d_out, d_in, block, sparsity = case
        self.check(make_linear_problem(tokens, d_out, d_in, block, sparsity, dtype), dtype)

    @pytest.mark.parametrize("edge", EDGE)
    def test_edge_patterns(self, edge):
        nbr, nbc = 4, 6
        mask = np.random.default_rng(1).random((nbr, nbc)) < 0.5
        if edge == "all_zero_rows":
            mask[0] = mask[2] = False
            mask[1, 0] = mask[3, 5] = True
        elif edge == "fully_dense":
            mask[:] = True
        elif edge == "single_block":
            mask[:] = False
            mask[2, 3] = True
        else:
            mask[:] = False
        p = make_linear_problem(21, nbr * 16, nbc * 16, (16, 16), 0.0, block_mask=mask)
        assert p.w.nnz_blocks == mask.sum()
        np.testing.assert_array_equal(bsr_to_dense(p.w), p.w_dense)
        self.check(p, jnp.float32, block_t=16)

    def test_no_bias_and_multi_tile(self):
        p = make_linear_problem(70, 128, 64, (32, 32), 0.5, seed=3)
        y = self.run(p.x, p.w, None, block_t=16)  # 5 token tiles, last one partial
        assert_close(y, masked_dense(p.x, p.w_dense, jnp.zeros(128)), jnp.float32,
                     self.INTERPRET)

    def test_rejects_bad_inputs(self):
        p = make_linear_problem(8, 64, 64, (16, 16), 0.5)
        with pytest.raises(ValueError, match=r"x must have shape \(tokens, 64\)"):
            self.run(p.x[:, :32], p.w, None)
        with pytest.raises(ValueError, match="must equal x dtype"):
            self.run(p.x.astype(jnp.bfloat16), p.w, None)
        with pytest.raises(ValueError, match=r"bias must have shape \(64,\)"):
            self.run(p.x, p.w, p.bias[:8])


class _Tpu(_SparseLinearCases):
    KERNEL = staticmethod(kernel_tpu.sparse_linear_tpu)
    BLOCKS = staticmethod(lambda bt: kernel_tpu.BlockSizes(block_t=bt))
    PLATFORM = "tpu"


class _Triton(_SparseLinearCases):
    KERNEL = staticmethod(kernel_triton.sparse_linear_triton)
    BLOCKS = staticmethod(lambda bt: kernel_triton.BlockSizes(block_t=bt))
    PLATFORM = "gpu"


class TestSparseLinearTpu(_Tpu):
    """Mosaic TPU on a TPU (skipped elsewhere)."""


class TestSparseLinearTpuInterpret(_Tpu):
    INTERPRET = True


@pytest.mark.gpu
class TestSparseLinearTriton(_Triton):
    """Triton lowering on a GPU."""


class TestSparseLinearTritonInterpret(_Triton):
    INTERPRET = True


def test_tpu_faithful_interpreter():
    """The DMA/semaphore-simulating TPU interpreter (pltpu.InterpretParams) agrees too."""
    from jax.experimental.pallas import tpu as pltpu

    p = make_linear_problem(24, 128, 96, (32, 32), 0.5, seed=5)
    y = kernel_tpu.sparse_linear_tpu(p.x, p.w, p.bias, block_sizes=kernel_tpu.BlockSizes(16),
                                     interpret=pltpu.InterpretParams())
    assert_close(y, masked_dense(p.x, p.w_dense, p.bias), jnp.float32, True)


@pytest.mark.slow
@pytest.mark.parametrize("block", [16, 32, 64, 128])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9])
@pytest.mark.parametrize("kernel", ["tpu", "triton"])
def test_sweep_slow(kernel, block, sparsity):
    """Bigger interpret sweep: a ViT-B fc1 at 197 tokens, every block size and sparsity."""
    p = make_linear_problem(197, 3072, 768, (block, block), sparsity, jnp.bfloat16, seed=7)
    if kernel == "tpu":
        y = kernel_tpu.sparse_linear_tpu(p.x, p.w, p.bias, interpret=True,
                                         block_sizes=kernel_tpu.BlockSizes(128))
    else:
        y = kernel_triton.sparse_linear_triton(p.x, p.w, p.bias, interpret=True,
                                               block_sizes=kernel_triton.BlockSizes(64))
    assert_close(y, masked_dense(p.x, p.w_dense, p.bias), jnp.bfloat16, True)
