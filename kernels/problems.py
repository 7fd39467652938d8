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


def make_linear_problem(tokens: int, d_out: int, d_in: int, block_shape: tuple[int, int],
                        sparsity: float, dtype: Any = jnp.float32, seed: int = 0,
                        block_mask: np.ndarray | None = None) -> LinearProblem:
    """A random x and a block-pruned weight (``sparsity`` of the blocks zero, or ``block_mask``),
    both rounded to ``dtype``; weights scaled by 1/sqrt(d_in) so outputs are O(1)."""
    rng = np.random.default_rng(seed)
    if block_mask is None:
        block_mask = random_block_mask((d_out, d_in), block_shape, sparsity, seed=seed)
    w = rng.standard_normal((d_out, d_in), dtype=np.float32) / np.sqrt(d_in)
    w = (w * expand_block_mask(block_mask, block_shape)).astype(dtype)
    x = rng.standard_normal((tokens, d_in), dtype=np.float32).astype(dtype)
    bias = (0.1 * rng.standard_normal((d_out,), dtype=np.float32)).astype(dtype)
    w_bsr = to_device(bsr_from_dense(w, block_shape, block_mask=block_mask))
    return LinearProblem(x=jnp.asarray(x), w_dense=jnp.asarray(w), w=w_bsr, bias=jnp.asarray(bias))
