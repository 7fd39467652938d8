"""Every kernel lowers for its real target from this CPU machine (``lowering_platforms``).

Lowering runs the Pallas -> Triton IR / Mosaic GPU / Mosaic TPU translation with all its shape,
dtype and primitive checks (e.g. it caught exact GELU's erfc, which neither Triton nor Mosaic TPU
lowers); only the final device compilation (ptxas, libtpu) needs the hardware.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from taco_jax.kernels.problems import make_linear_problem, make_mlp_problem
from taco_jax.kernels.sparse_linear import kernel_gpu, kernel_tpu, kernel_triton
from taco_jax.kernels.sparse_mlp import kernel_gpu as mlp_gpu
from taco_jax.kernels.sparse_mlp import kernel_tpu as mlp_tpu
from taco_jax.kernels.sparse_mlp import kernel_triton as mlp_triton


def lower(fn, args, platform):
    return jax.jit(fn).trace(*args).lower(lowering_platforms=(platform,)).as_text()


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
@pytest.mark.parametrize("block", [16, 64, 128])
def test_triton_linear_lowers(block, dtype):
    p = make_linear_problem(100, 256, 256, (block, block), 0.5, dtype)
    text = lower(lambda x, w, b: kernel_triton.sparse_linear_triton(x, w, b), (p.x, p.w, p.bias),
                 "cuda")
    assert "triton" in text.lower()


@pytest.mark.parametrize("block", [16, 32, 64, 128])
@pytest.mark.parametrize("transpose_in_smem", [True, False])
def test_mosaic_gpu_linear_lowers(block, transpose_in_smem):
    p = make_linear_problem(200, 256, 256, (block, block), 0.5, jnp.bfloat16)
    bs = kernel_gpu.BlockSizes(128, 3, 4, transpose_in_smem)
    text = lower(lambda x, w, b: kernel_gpu.sparse_linear_gpu(x, w, b, block_sizes=bs),
                 (p.x, p.w, p.bias), "cuda")
    assert "mosaic_gpu" in text.lower()


def test_tpu_linear_lowers_and_rejects_small_blocks():
    p = make_linear_problem(300, 256, 384, (128, 128), 0.5, jnp.bfloat16)
    text = lower(lambda x, w, b: kernel_tpu.sparse_linear_tpu(x, w, b), (p.x, p.w, p.bias), "tpu")
    assert "tpu_custom_call" in text
    q = make_linear_problem(64, 128, 128, (64, 64), 0.5, jnp.bfloat16)
    with pytest.raises(ValueError, match="multiples of 128"):
        lower(lambda x, w, b: kernel_tpu.sparse_linear_tpu(x, w, b), (q.x, q.w, q.bias), "tpu")


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
@pytest.mark.parametrize("groups", [1, 3])
def test_triton_mlp_lowers_vit_b(groups, dtype):
    m = make_mlp_problem(100, 768, 3072, (64, 64), 0.9, dtype)
    bs = mlp_triton.BlockSizes(32, 8, 2, groups)
    text = lower(lambda x, w: mlp_triton.sparse_mlp_triton(x, w, block_sizes=bs),
                 (m.x, m.weights), "cuda")
    assert "triton" in text.lower()


def test_tpu_mlp_lowers():
    m = make_mlp_problem(300, 256, 512, (128, 128), 0.5, jnp.bfloat16)
    text = lower(lambda x, w: mlp_tpu.sparse_mlp_tpu(x, w), (m.x, m.weights), "tpu")
    assert "tpu_custom_call" in text


@pytest.mark.parametrize("block,block_t", [(16, 128), (64, 64), (64, 128), (128, 64)])
@pytest.mark.parametrize("approximate_gelu", [False, True])
def test_mosaic_gpu_mlp_lowers(block, block_t, approximate_gelu):
    m = make_mlp_problem(100, 256, 512, (block, block), 0.75, jnp.bfloat16)
    bs = mlp_gpu.BlockSizes(block_t, 2)
    text = lower(lambda x, w, s: mlp_gpu.sparse_mlp_gpu(x, w, s, block_sizes=bs,
                                                        approximate_gelu=approximate_gelu),
                 (m.x, m.weights, mlp_gpu.build_schedule(m.weights)), "cuda")
    assert "mosaic_gpu" in text.lower()
