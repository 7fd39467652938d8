"""Position-embedding resizing for another input resolution, as timm's
``resample_abs_pos_embed`` does it (bicubic, ``antialias=True``, prefix tokens kept), computed
in float64 so it agrees with timm to float32 rounding."""

from __future__ import annotations

import math

import numpy as np


def _cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    """The Keys cubic kernel with PIL's a = -0.5 (PyTorch's antialiased bicubic uses it too)."""
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of PyTorch's antialiased bicubic resize along one axis
    (``align_corners=False``); taps outside the input are dropped and the rest renormalized."""
    scale = n_in / n_out
    support = 2.0 * max(scale, 1.0)
    inv = 1.0 / max(scale, 1.0)
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), n_in)
        w = _cubic((np.arange(lo, hi) - center + 0.5) * inv)
        m[i, lo:hi] = w / w.sum()
    return m


def resize_pos_embed(pos_embed: np.ndarray, num_prefix_tokens: int,
                     new_grid: tuple[int, int]) -> np.ndarray:
    """(1, prefix + h·w, D) → (1, prefix + H·W, D) for a square old grid h = w; prefix tokens
    (class / distillation) are kept as they are."""
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[0, num_prefix_tokens:]
    side = math.isqrt(grid.shape[0])
    if side * side != grid.shape[0]:
        raise ValueError(f"position embedding has {grid.shape[0]} grid tokens, not a square")
    grid = grid.reshape(side, side, -1).astype(np.float64)
    rows, cols = resize_matrix(side, new_grid[0]), resize_matrix(side, new_grid[1])
    out = np.einsum("Hh,Ww,hwd->HWd", rows, cols, grid).reshape(1, -1, grid.shape[-1])
    return np.concatenate([prefix, out.astype(pos_embed.dtype)], axis=1)
