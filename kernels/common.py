"""Shared checks and small helpers for the block-sparse kernels."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .bsr import BSR, validate_bsr

# f32 accumulation everywhere; these are the input dtypes the kernels accept.
SUPPORTED_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))


def check_linear_args(x: jax.Array, w: BSR, bias: jax.Array | None) -> None:
    """Static checks shared by every sparse-linear entry point (shapes and dtypes)."""
    validate_bsr(w)
    d_out, d_in = w.shape
    if x.ndim != 2 or x.shape[1] != d_in:
        raise ValueError(f"x must have shape (tokens, {d_in}) to match W {w.shape}, "
                         f"got {x.shape}")
    if jnp.dtype(x.dtype) not in SUPPORTED_DTYPES:
        raise ValueError(f"x dtype must be one of {[str(d) for d in SUPPORTED_DTYPES]}, "
                         f"got {x.dtype}")
    if jnp.dtype(w.data.dtype) != jnp.dtype(x.dtype):
        raise ValueError(f"W.data dtype {w.data.dtype} must equal x dtype {x.dtype} "
                         f"(cast the BSR with to_device(w, dtype))")
    if bias is not None and bias.shape != (d_out,):
        raise ValueError(f"bias must have shape ({d_out},), got {bias.shape}")


def row_bias(bias: jax.Array | None, d_out: int) -> jax.Array:
    """bias (d_out,) or None -> (1, d_out) f32 (zeros if None) so every kernel takes one."""
    if bias is None:
        return jnp.zeros((1, d_out), jnp.float32)
    return bias.astype(jnp.float32).reshape(1, d_out)


def pad_rows(x: jax.Array, multiple: int) -> jax.Array:
    """Zero-pad axis 0 of ``x`` up to a multiple of ``multiple``."""
    pad = -x.shape[0] % multiple
    return jnp.pad(x, ((0, pad), (0, 0))) if pad else x


def erf_polynomial(x: jax.Array) -> jax.Array:
    """erf(x) by Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7), from exp and arithmetic only:
    the Pallas Triton lowering has no erf/erfc primitive."""
    a1, a2, a3, a4, a5 = 0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429
    ax = jnp.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * ax)
    poly = ((((a5 * t + a4) * t + a3) * t + a2) * t + a1) * t
    y = 1.0 - poly * jnp.exp(-ax * ax)
    return jnp.where(x < 0, -y, y)


def gelu(h: jax.Array, approximate: bool = False, polynomial_erf: bool = False) -> jax.Array:
    """GELU; exact (erf) by default, as PyTorch/timm and our models' ``Mlp``. ``jax.nn.gelu``
    lowers exact GELU through erfc, which neither Pallas Triton nor Mosaic TPU lowers: kernels
    use 0.5 h (1 + erf(h/√2)) with ``lax.erf`` (Mosaic TPU) or ``erf_polynomial`` (Triton)."""
    if approximate:
        return jax.nn.gelu(h, approximate=True)
    z = h * 0.7071067811865476
    erf = erf_polynomial(z) if polynomial_erf else jax.lax.erf(z)
    return 0.5 * h * (1.0 + erf)
