"""Export a pruned model for the block-sparse kernels: each masked layer's weight as BSR.

A Linear/Conv kernel becomes the (d_out, d_in) matrix the kernels multiply (conv: patches ordered
(kh, kw, C_in), as ``prune.layout``), stored as BSR blocks of ``block_shape``: the blocks that hold
any non-zero weight. Structured cuts need no export: the pruned model already has the smaller
dense shapes and is saved as it is.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

from taco_jax import files
from taco_jax.kernels.bsr import BSR, bsr_from_dense
from taco_jax.kernels.layers import DispatchTable, SparseLinear, SparseMLP
from taco_jax.models.layers import Mlp
from taco_jax.models.paths import body_layers, get_layer, named_layers, set_layer
from taco_jax.prune import patterns
from taco_jax.prune.layout import layer_matrix


def block_shape_for(pattern: str | patterns.Pattern, default: tuple[int, int] = (16, 16)
                    ) -> tuple[int, int]:
    """The BSR block of a pruning pattern (``prune.patterns.parse_pattern``, the one parser of
    pattern names): its own tile for ``blockRxC``, else ``default``."""
    p = patterns.parse_pattern(pattern)
    return (p.r, p.c) if isinstance(p, patterns.Block) else default


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
    files.write_npz(path, arrays)
    files.write_json(path.with_suffix(".json"), summary)
    return summary


def with_sparse_kernels(model: nnx.Module, block_shape: tuple[int, int], *, dtype: Any = None,
                        path: str | None = None, interpret: bool = False,
                        block_sizes: Any = None, table: DispatchTable | None = None
                        ) -> dict[str, str]:
    """Run a pruned model's layers through the block-sparse kernels, in place.

    Every ``Mlp`` (``fc2(gelu(fc1(x)))``, both Linear) becomes one fused ``SparseMLP``, and every
    other ``nnx.Linear`` except ``model.head_name`` becomes a ``SparseLinear``, built from the
    zeros the pruned kernels hold (masks are held exactly, so the zeros are the mask). Layers
    whose (d_out, d_in) the block does not tile stay as they are. Each layer picks its path at
    construction (``path=None``: the kernel where its block density is below the device's
    break-even in ``table``, None: this device's ``DispatchTable``; else the masked dense matmul;
    always dense on CPU); pass ``path`` to force one.
    Returns {layer name: path}. Logits are unchanged up to the compute ``dtype``'s rounding.
    """
    r, c = block_shape
    kw = dict(dtype=dtype, path=path, interpret=interpret, block_sizes=block_sizes, table=table)
    mlps = named_layers(model, (Mlp,))
    inside = {f"{name}.{fc}" for name in mlps for fc in ("fc1", "fc2")}
    chosen = {}
    for name, mlp in mlps.items():
        if mlp.fc1.out_features % r or mlp.fc1.in_features % c:  # (b_hidden, b_model) blocks
            continue
        layer = SparseMLP.from_mlp(mlp, (r, c), **kw)
        set_layer(model, name, layer)
        chosen[name] = layer.path
    for name, linear in body_layers(model, (nnx.Linear,)).items():
        if name in inside:
            continue
        d_out, d_in = linear.out_features, linear.in_features
        if d_out % r or d_in % c:
            continue
        layer = SparseLinear.from_linear(linear, (r, c), **kw)
        set_layer(model, name, layer)
        chosen[name] = layer.path
    return chosen
