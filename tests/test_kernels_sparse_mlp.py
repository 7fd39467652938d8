"""Fused block-sparse MLP kernels vs the jnp reference and the masked dense MLP."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from taco_jax.kernels.problems import make_mlp_problem
from taco_jax.kernels.sparse_mlp import kernel_tpu, kernel_triton
from taco_jax.kernels.sparse_mlp.reference import dense_mlp, sparse_mlp_reference
from taco_jax.kernels.sparse_mlp.weights import mlp_weights_from_dense
from taco_jax.kernels.testing import assert_close, has_platform


def masked_dense_mlp(p):
    """Independent check: jnp.dot on the masked dense weights, f32 throughout."""
    f = lambda a: a.astype(jnp.float32)
    return dense_mlp(f(p.x), f(p.w1), p.b1, f(p.w2), p.b2, precision=jax.lax.Precision.HIGHEST)


# (tokens, D, H, (b_hidden, b_model), sparsity)
CASES = [
    (16, 768, 3072, (64, 64), 0.9),   # ViT-B/16 MLP, few tokens
    (21, 128, 512, (32, 32), 0.75),   # odd tokens
    (12, 64, 256, (32, 16), 0.5),     # rectangular blocks
    (8, 64, 128, (16, 16), 0.0),      # fully dense
]


class _SparseMLPCases:
    KERNEL = None
    BLOCKS = None
    PLATFORM = ""
    INTERPRET = False

    def setup_method(self):
        if not self.INTERPRET and not has_platform(self.PLATFORM):
            pytest.skip(f"needs a {self.PLATFORM}")

    def run(self, x, weights, block_t=16):
        return type(self).KERNEL(x, weights, block_sizes=type(self).BLOCKS(block_t),
                                 interpret=self.INTERPRET)

    def check(self, p, dtype, block_t=16):
        y = self.run(p.x, p.weights, block_t)
        assert y.shape == p.x.shape and y.dtype == p.x.dtype
        assert_close(y, sparse_mlp_reference(p.x, p.weights), dtype, self.INTERPRET)
        assert_close(y, masked_dense_mlp(p), dtype, self.INTERPRET)

    @pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
    @pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}x{c[1]}h{c[2]}b{c[3]}s{c[4]}")
    def test_shapes(self, case, dtype):
        tokens, d, h, block, sparsity = case
        self.check(make_mlp_problem(tokens, d, h, block, sparsity, dtype), dtype)

    @pytest.mark.parametrize("edge", ["empty_rows", "single_blocks", "fc1_zero", "fc2_zero"])
    def test_edge_patterns(self, edge):
        rng = np.random.default_rng(2)
        m1 = rng.random((8, 4)) < 0.5  # fc1: 8 hidden chunks x 4 model blocks (16x16)
        m2 = rng.random((4, 8)) < 0.5  # fc2: 4 model blocks x 8 hidden chunks
        if edge == "empty_rows":  # hidden chunk 1 has no fc1 block (gelu(b1) still flows)
            m1[1] = m1[5] = False
            m2[:, 3] = False
            m1[1, 0] = False
            m2[:, 1] = True
        elif edge == "single_blocks":
            m1[:] = m2[:] = False
            m1[6, 2] = m2[1, 6] = True
        elif edge == "fc1_zero":
            m1[:] = False
        else:
            m2[:] = False
        p = make_mlp_problem(19, 64, 128, (16, 16), 0.0, masks=(m1, m2))
        self.check(p, jnp.float32)

    def test_approximate_gelu(self):
        p = make_mlp_problem(10, 64, 128, (16, 16), 0.5, seed=9)
        y = type(self).KERNEL(p.x, p.weights, block_sizes=type(self).BLOCKS(16),
                              approximate_gelu=True, interpret=self.INTERPRET)
        f = lambda a: a.astype(jnp.float32)
        want = dense_mlp(f(p.x), f(p.w1), p.b1, f(p.w2), p.b2,
                         precision=jax.lax.Precision.HIGHEST, approximate_gelu=True)
        assert_close(y, want, jnp.float32, self.INTERPRET)
        exact = masked_dense_mlp(p)
        assert float(jnp.abs(want - exact).max()) > 1e-4  # the flag really changes the GELU

    def test_rejects_bad_inputs(self):
        p = make_mlp_problem(8, 64, 128, (16, 16), 0.5)
        with pytest.raises(ValueError, match=r"x must have shape \(tokens, 64\)"):
            self.run(p.x[:, :32], p.weights)
        with pytest.raises(ValueError, match="must equal x dtype"):
            self.run(p.x.astype(jnp.bfloat16), p.weights)


class _Tpu(_SparseMLPCases):
    KERNEL = staticmethod(kernel_tpu.sparse_mlp_tpu)
    BLOCKS = staticmethod(lambda bt: kernel_tpu.BlockSizes(block_t=bt))
    PLATFORM = "tpu"


class _Triton(_SparseMLPCases):
    KERNEL = staticmethod(kernel_triton.sparse_mlp_triton)
    BLOCKS = staticmethod(lambda bt: kernel_triton.BlockSizes(block_t=bt))
    PLATFORM = "gpu"


class TestSparseMLPTpu(_Tpu):
    """Mosaic TPU on a TPU (skipped elsewhere)."""


class TestSparseMLPTpuInterpret(_Tpu):
    INTERPRET = True


@pytest.mark.gpu
class TestSparseMLPTriton(_Triton):
    """Triton lowering on a GPU."""


class TestSparseMLPTritonInterpret(_Triton):
    INTERPRET = True


@pytest.mark.parametrize("groups", [2, 4])
def test_triton_out_groups_interpret(groups):
    """Output columns split over programs (fc1 recomputed per group)."""
    p = make_mlp_problem(20, 128, 256, (32, 32), 0.6, seed=11)
    bs = kernel_triton.BlockSizes(block_t=16, out_groups=groups)
    y = kernel_triton.sparse_mlp_triton(p.x, p.weights, block_sizes=bs, interpret=True)
    assert_close(y, masked_dense_mlp(p), jnp.float32, True)
    with pytest.raises(ValueError, match="out_groups=3 must divide the 4"):
        kernel_triton.sparse_mlp_triton(p.x, p.weights, interpret=True,
                                        block_sizes=kernel_triton.BlockSizes(16, out_groups=3))


def test_tpu_faithful_interpreter_race_check():
    """The DMA-simulating TPU interpreter with race detection agrees with the dense MLP."""
    from jax.experimental.pallas import tpu as pltpu

    p = make_mlp_problem(40, 64, 256, (32, 16), 0.5, seed=3)
    y = kernel_tpu.sparse_mlp_tpu(p.x, p.weights, block_sizes=kernel_tpu.BlockSizes(16),
                                  interpret=pltpu.InterpretParams(detect_races=True))
    assert_close(y, masked_dense_mlp(p), jnp.float32, True)


def test_weights_validation():
    w1 = np.zeros((64, 32), np.float32)
    with pytest.raises(ValueError, match=r"w1 must be \(H, D\) and w2 \(D, H\)"):
        mlp_weights_from_dense(w1, np.zeros(64), np.zeros((64, 32)), np.zeros(32), (16, 16))
    with pytest.raises(ValueError, match="must be divisible"):
        mlp_weights_from_dense(w1, np.zeros(64), w1.T, np.zeros(32), (48, 16))
    with pytest.raises(ValueError, match=r"b1 must have shape \(64,\)"):
        mlp_weights_from_dense(w1, np.zeros(8), w1.T, np.zeros(32), (16, 16))


@pytest.mark.slow
@pytest.mark.parametrize("kernel", ["tpu", "triton"])
@pytest.mark.parametrize("sparsity", [0.5, 0.9])
def test_vit_mlp_slow(kernel, sparsity):
    """ViT-B MLP at one image's 197 tokens, bf16."""
    p = make_mlp_problem(197, 768, 3072, (64, 64), sparsity, jnp.bfloat16, seed=4)
    if kernel == "tpu":
        y = kernel_tpu.sparse_mlp_tpu(p.x, p.weights, interpret=True,
                                      block_sizes=kernel_tpu.BlockSizes(128))
    else:
        y = kernel_triton.sparse_mlp_triton(p.x, p.weights, interpret=True,
                                            block_sizes=kernel_triton.BlockSizes(64))
    assert_close(y, masked_dense_mlp(p), jnp.bfloat16, True)
