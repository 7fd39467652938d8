"""Tolerances and device checks shared by the kernel tests (and the benchmark's self-check)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def has_platform(platform: str) -> bool:
    """True if JAX sees a device of ``platform`` ('gpu', 'tpu')."""
    try:
        return bool(jax.devices(platform))
    except RuntimeError:
        return False


def tolerance(dtype, interpret: bool) -> float:
    """Relative tolerance: f32 exact-ish in interpret mode (CPU f32 dots), TF32 on GPU tensor
    cores; for bf16 the output rounding (2^-8 relative) dominates."""
    if jnp.dtype(dtype) == jnp.bfloat16:
        return 1e-2
    return 1e-5 if interpret else 5e-3


def assert_close(y, want, dtype, interpret: bool) -> None:
    """Elementwise |y - want| <= tol * |want| + tol * max(1, max|want|)."""
    y = np.asarray(y, np.float32)
    want = np.asarray(want, np.float32)
    scale = max(1.0, float(np.abs(want).max()))
    tol = tolerance(dtype, interpret)
    np.testing.assert_allclose(y, want, rtol=tol, atol=tol * scale)
