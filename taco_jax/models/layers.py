"""Pieces shared by the transformer and ConvNeXt families (timm names ``fc1``, ``gamma``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

TRUNC_NORMAL = nnx.initializers.truncated_normal(stddev=0.02)


def linear(din: int, dout: int, *, use_bias: bool = True, rngs: nnx.Rngs) -> nnx.Linear:
    """timm's transformer init: truncated normal (std 0.02) weights, zero bias."""
    return nnx.Linear(din, dout, use_bias=use_bias, kernel_init=TRUNC_NORMAL, rngs=rngs)


def layer_norm(dim: int, eps: float, *, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(dim, epsilon=eps, use_fast_variance=False, rngs=rngs)


def gelu(x: jax.Array) -> jax.Array:
    """PyTorch's default GELU is the exact erf form, not the tanh approximation."""
    return jax.nn.gelu(x, approximate=False)


class Mlp(nnx.Module):
    """``fc2(gelu(fc1(x)))``, hidden width = whatever ``fc1``/``fc2`` hold. (..., D) → (..., D)."""

    def __init__(self, dim: int, hidden: int, *, rngs: nnx.Rngs):
        self.fc1 = linear(dim, hidden, rngs=rngs)
        self.fc2 = linear(hidden, dim, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(gelu(self.fc1(x)))


class LayerScale(nnx.Module):
    """Per-channel scale of a residual branch (timm ``ls1.gamma``). (..., D) → (..., D)."""

    def __init__(self, dim: int, init_value: float):
        self.gamma = nnx.Param(jnp.full((dim,), init_value, jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        return x * self.gamma.value


def drop_path(rate: float, ndim: int, *, rngs: nnx.Rngs) -> nnx.Dropout | None:
    """Stochastic depth: in training, zero a whole sample's residual branch with prob ``rate``
    (rescaling the rest); ``None`` when ``rate`` is 0 so the model carries no RNG state."""
    if rate <= 0.0:
        return None
    return nnx.Dropout(rate, broadcast_dims=tuple(range(1, ndim)), rngs=rngs)


def residual_branch(y: jax.Array, scale: nnx.Module | None, dropper: nnx.Dropout | None
                    ) -> jax.Array:
    """Layer scale then drop path, each skipped when absent."""
    if scale is not None:
        y = scale(y)
    return y if dropper is None else dropper(y)
