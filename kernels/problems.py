"""Random pruned-layer problems shared by the tests and the benchmark."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .bsr import BSR, bsr_from_dense, expand_block_mask, random_block_mask, to_device


@dataclasses.dataclass(frozen=True)
class LinearProblem:
    """x (T, d_in); w_dense (d_out, d_in) masked; w the same weight in BSR; bias (d_out,)."""

    x: jax.Array
    w_dense: jax.Array
    w: BSR
    bias: jax.Array


def linear_problem_arrays(tokens: int, d_out: int, d_in: int, block_shape: tuple[int, int],
                          sparsity: float, dtype: Any = np.float32, seed: int = 0,
                          block_mask: np.ndarray | None = None
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Host arrays of ``make_linear_problem``: x (T, d_in), masked w (d_out, d_in), bias (d_out,)
    rounded to ``dtype``, and the block mask. No JAX device is touched, so another framework (the
    device check's PyTorch anchor) can run on exactly the same matrices."""
    rng = np.random.default_rng(seed)
    if block_mask is None:
        block_mask = random_block_mask((d_out, d_in), block_shape, sparsity, seed=seed)
    w = rng.standard_normal((d_out, d_in), dtype=np.float32) / np.sqrt(d_in)
    w = (w * expand_block_mask(block_mask, block_shape)).astype(dtype)
    x = rng.standard_normal((tokens, d_in), dtype=np.float32).astype(dtype)
    bias = (0.1 * rng.standard_normal((d_out,), dtype=np.float32)).astype(dtype)
    return x, w, bias, block_mask


def make_linear_problem(tokens: int, d_out: int, d_in: int, block_shape: tuple[int, int],
                        sparsity: float, dtype: Any = jnp.float32, seed: int = 0,
                        block_mask: np.ndarray | None = None) -> LinearProblem:
    """A random x and a block-pruned weight (``sparsity`` of the blocks zero, or ``block_mask``),
    both rounded to ``dtype``; weights scaled by 1/sqrt(d_in) so outputs are O(1)."""
    x, w, bias, block_mask = linear_problem_arrays(tokens, d_out, d_in, block_shape, sparsity,
                                                   dtype, seed, block_mask)
    w_bsr = to_device(bsr_from_dense(w, block_shape, block_mask=block_mask))
    return LinearProblem(x=jnp.asarray(x), w_dense=jnp.asarray(w), w=w_bsr, bias=jnp.asarray(bias))


@dataclasses.dataclass(frozen=True)
class MLPProblem:
    """x (T, D); masked dense w1 (H, D), w2 (D, H), biases; the same weights for the kernels."""

    x: jax.Array
    w1: jax.Array
    b1: jax.Array
    w2: jax.Array
    b2: jax.Array
    weights: Any  # SparseMLPWeights


def make_mlp_problem(tokens: int, d_model: int, d_hidden: int, block_shape: tuple[int, int],
                     sparsity: float, dtype: Any = jnp.float32, seed: int = 0,
                     masks: tuple[np.ndarray, np.ndarray] | None = None) -> MLPProblem:
    """A random x and block-pruned fc1 (H, D) / fc2 (D, H); ``block_shape = (b_hidden, b_model)``
    (fc2 is pruned with the transposed block). ``masks`` overrides the random block masks."""
    from .sparse_mlp.weights import mlp_weights_from_dense

    rng = np.random.default_rng(seed)
    bh, bd = block_shape
    if masks is None:
        masks = (random_block_mask((d_hidden, d_model), (bh, bd), sparsity, seed=seed),
                 random_block_mask((d_model, d_hidden), (bd, bh), sparsity, seed=seed + 1))
    w1 = rng.standard_normal((d_hidden, d_model), dtype=np.float32) / np.sqrt(d_model)
    w2 = rng.standard_normal((d_model, d_hidden), dtype=np.float32) / np.sqrt(d_hidden)
    w1 = (w1 * expand_block_mask(masks[0], (bh, bd))).astype(dtype)
    w2 = (w2 * expand_block_mask(masks[1], (bd, bh))).astype(dtype)
    b1 = (0.5 * rng.standard_normal((d_hidden,), dtype=np.float32)).astype(np.float32)
    b2 = (0.1 * rng.standard_normal((d_model,), dtype=np.float32)).astype(np.float32)
    x = rng.standard_normal((tokens, d_model), dtype=np.float32).astype(dtype)
    weights = mlp_weights_from_dense(w1, b1, w2, b2, block_shape)
    return MLPProblem(x=jnp.asarray(x), w1=jnp.asarray(w1), b1=jnp.asarray(b1),
                      w2=jnp.asarray(w2), b2=jnp.asarray(b2), weights=weights)
