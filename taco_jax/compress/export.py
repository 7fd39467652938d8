"""Export a pruned model for the block-sparse kernels: each masked layer's weight as BSR.

A Linear/Conv kernel becomes the (d_out, d_in) matrix the kernels multiply (conv: patches ordered
(kh, kw, C_in), as ``prune.layout``), stored as BSR blocks of ``block_shape``: the blocks that hold
any non-zero weight. Structured cuts need no export: the pruned model already has the smaller
dense shapes and is saved as it is.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from flax import nnx

from taco_jax.kernels.bsr import BSR, bsr_from_dense
from taco_jax.models.paths import get_layer
from taco_jax.prune.layout import layer_matrix


def block_shape_for(pattern: str, default: tuple[int, int] = (16, 16)) -> tuple[int, int]:
    """The BSR block of a pruning pattern: its own tile for ``blockRxC``, else ``default``."""
    if pattern.startswith("block"):
        r, c = pattern[len("block"):].split("x")
        return int(r), int(c)
    return default


def to_bsr(model: nnx.Module, masks: dict[str, np.ndarray],
           block_shape: tuple[int, int]) -> dict[str, BSR]:
    """name -> BSR of the layer's (d_out, d_in) weight; layers whose matrix the block does not
    tile, and grouped convs, are skipped (they stay dense)."""
    out = {}
    r, c = block_shape
    for name in masks:
        W = np.asarray(layer_matrix(get_layer(model, name)))
        if W.shape[0] != 1 or W.shape[1] % r or W.shape[2] % c:
            continue
        out[name] = bsr_from_dense(W[0], block_shape)
    return out


def save_bsr(path: str | os.PathLike, weights: dict[str, BSR]) -> dict:
    """Write ``weights`` to ``path`` (npz: ``<layer>/data|indices|indptr``) and return the
    per-layer summary (shape, block, stored blocks, block density) that goes in the report."""
    arrays, summary = {}, {}
    for name, b in weights.items():
        arrays[f"{name}/data"] = np.asarray(b.data)
        arrays[f"{name}/indices"] = np.asarray(b.indices)
        arrays[f"{name}/indptr"] = np.asarray(b.indptr)
        n_blocks = (b.shape[0] // b.block_shape[0]) * (b.shape[1] // b.block_shape[1])
        summary[name] = {"shape": list(b.shape), "block_shape": list(b.block_shape),
                         "blocks": int(b.data.shape[0]),
                         "block_density": b.data.shape[0] / max(n_blocks, 1)}
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)
    path.with_suffix(".json").write_text(json.dumps(summary, indent=2))
    return summary
