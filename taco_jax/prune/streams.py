"""Residual-stream pruning: the same channels out of every layer that writes a ResNet's residual
stream, and every layer that reads it compensated (structured pruning's widest cut).

A stream (``ShrinkPair`` with ``readers``, ``ResNet.residual_streams``) is written by the stem's
conv or a downsample and by every block's last conv, and read by every block's first conv and
downsample and by the head. Cutting only the blocks' inner widths leaves the stream's full width
(its convs, BatchNorms, additions): on resnet_mini that caps XLA CPU at 1.5x however narrow the
blocks get, while half of every width gives 2.1x (BUILD_NOTES).

The channels are chosen by coupled group OBS: each greedy step removes the channel whose summed
relative cost over the readers, Σ_j tr(W_jS (H_j⁻¹)_SS⁻¹ W_jSᵀ) / ‖W_j X_j‖², is least, and
updates every reader's weights and inverse Hessian (``solver.remove_group``), so each reader ends
at the least-squares optimum of its kept inputs (on the damped H). The writers keep their
weights: the cut only drops their outputs. ``method="magnitude"`` keeps the channels of largest
summed relative column norm over the readers, uncompensated (the channel-norm baseline).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx
from jax import lax

from taco_jax.models.paths import get_layer
from taco_jax.models.shrink import ShrinkPair, residual_streams, shrink_pair
from taco_jax.prune.hessian import collect_hessians
from taco_jax.prune.layout import groups, kernel_from_matrix, layer_matrix
from taco_jax.prune.patterns import Structured, aligned_level
from taco_jax.prune.result import LayerStats
from taco_jax.prune.solver import (
    check_finite,
    fill_dead_inputs,
    group_costs,
    hinv_upper_with_damping,
    lowest_k,
    prune_counts,
    remove_group,
)


def _energy(W: jax.Array, H: jax.Array) -> jax.Array:
    return jnp.maximum(jnp.einsum("ri,ij,rj->", W, H, W), 1e-30)


@functools.partial(jax.jit, static_argnames=("units", "percdamp", "magnitude"))
def coupled_prune(Ws: tuple[jax.Array, ...], Hs: tuple[jax.Array, ...], n_remove: jax.Array, *,
                  units: tuple[int, ...], percdamp: float = 0.01, magnitude: bool = False
                  ) -> tuple[tuple[jax.Array, ...], jax.Array]:
    """Remove ``n_remove`` of the C channels that readers W_j (rows_j, C·units_j) with input
    Hessians H_j (C·units_j, C·units_j) share (channel c = inputs [c·u_j, (c+1)·u_j) of reader
    j): greedy coupled group OBS (module docstring), or ``magnitude``. Returns (every reader's
    weights, zero on the removed channels; removed (C,) bool)."""
    C = Ws[0].shape[1] // units[0]
    if magnitude:
        score = sum(jnp.sum((W**2).reshape(W.shape[0], C, u), (0, 2)) / jnp.maximum(
            jnp.sum(W**2), 1e-30) for W, u in zip(Ws, units, strict=True))
        removed = lowest_k(score, n_remove)
    else:
        energies = [_energy(W, H) for W, H in zip(Ws, Hs, strict=True)]
        Hinvs, live = [], []
        for W, H in zip(Ws, Hs, strict=True):
            Hd, dead = fill_dead_inputs(H)
            U, _, _ = hinv_upper_with_damping(Hd, percdamp)
            Hinvs.append(U.T @ U)
            live.append(jnp.where(dead[None], 0.0, W))

        def step(_, carry):
            Ws, Hinvs, removed = carry
            parts = [group_costs(W, Hi, removed, u)
                     for W, Hi, u in zip(Ws, Hinvs, units, strict=True)]
            total = sum(cost / e for (cost, _), e in zip(parts, energies, strict=True))
            s = jnp.argmin(jnp.where(removed, jnp.inf, total))
            new = [remove_group(W, Hi, s, Hss_inv[s], u)
                   for W, Hi, u, (_, Hss_inv) in zip(Ws, Hinvs, units, parts, strict=True)]
            return (tuple(w for w, _ in new), tuple(h for _, h in new), removed.at[s].set(True))

        Ws, _, removed = lax.fori_loop(0, n_remove, step,
                                       (tuple(live), tuple(Hinvs), jnp.zeros(C, bool)))
    Ws = tuple(jnp.where(jnp.repeat(removed, u)[None], 0.0, W) for W, u in zip(Ws, units,
                                                                                strict=True))
    return Ws, removed


def stream_kept(width: int, sparsity: float, channel_multiple: int = 1) -> int:
    """How many of a ``width``-channel residual stream's channels a cut at ``sparsity`` keeps:
    ``floor(level · width)`` removed at the level aligned to ``channel_multiple``
    (``patterns.aligned_level``). ``prune_streams`` cuts this many and ``speed_budget.shaped_like``
    times it."""
    level = aligned_level(sparsity, width, 1, channel_multiple)
    return width - int(prune_counts(Structured(1), level, 0, width, width)[0])


def prune_streams(model: nnx.Module, batches: Sequence, sparsity: float, *,
                  method: str = "auto", percdamp: float = 0.01, mesh=None,
                  streams: Sequence[ShrinkPair] | None = None, channel_multiple: int = 1
                  ) -> tuple[dict[str, np.ndarray], list[LayerStats]]:
    """Cut ``floor(sparsity · C)`` channels from each residual stream of ``model`` in place
    (``coupled_prune``, the readers' Hessians collected in one pass over ``batches``), then
    shrink every writer, BatchNorm and reader (``shrink.shrink_pair``). ``method``: "magnitude"
    for the channel-norm baseline, anything else for coupled OBS. ``streams``: default the
    model's own (``shrink.residual_streams``). ``channel_multiple``: each stream keeps
    a multiple of it (``stream_kept``). Returns (first reader -> kept channels, one
    LayerStats per stream: its pooled relative error Σ_j ‖ΔW_j X_j‖² / Σ_j ‖W_j X_j‖²)."""
    streams = list(residual_streams(model) if streams is None else streams)
    if not streams:
        raise ValueError(f"stream pruning needs a model with residual streams (a ResNet); "
                         f"{type(model).__name__} has none")
    for pair in streams:
        for name in pair.consumers:
            if groups(get_layer(model, name)) != 1:
                raise ValueError(f"stream pruning: reader {name!r} is a grouped conv; only "
                                 "ungrouped convs and Linears can read a cut stream")
    t0 = time.perf_counter()
    H = collect_hessians(model, batches, [n for p in streams for n in p.consumers], mesh=mesh)
    share = (time.perf_counter() - t0) / len(streams)
    kept, stats = {}, []
    for pair in streams:
        t0 = time.perf_counter()
        layers = [get_layer(model, n) for n in pair.consumers]
        width = layers[0].in_features
        Ws = tuple(layer_matrix(layer)[0] for layer in layers)
        Hs = tuple(H[n] for n in pair.consumers)
        for name, W, h in zip(pair.consumers, Ws, Hs, strict=True):
            try:
                check_finite(W, h)
            except ValueError as e:
                raise ValueError(f"prune: stream reader {name!r}: {e}") from None
        units = tuple(W.shape[1] // width for W in Ws)
        n_remove = width - stream_kept(width, sparsity, channel_multiple)
        W1s, removed = coupled_prune(Ws, Hs, jnp.int32(n_remove), units=units,
                                     percdamp=float(percdamp), magnitude=method == "magnitude")
        num = sum(float(_energy(W0 - W1, h)) for W0, W1, h in zip(Ws, W1s, Hs, strict=True))
        den = sum(float(_energy(W0, h)) for W0, h in zip(Ws, Hs, strict=True))
        shape = tuple(layers[0].kernel.get_value().shape)
        for layer, W1 in zip(layers, W1s, strict=True):
            k = layer.kernel.get_value()
            layer.kernel.set_value(kernel_from_matrix(W1[None], k.shape).astype(k.dtype))
        keep = np.flatnonzero(~np.asarray(removed))
        shrink_pair(model, pair, keep)
        kept[pair.consumer] = keep
        st = LayerStats(pair.consumer, shape, "stream", 1.0 - len(keep) / width, num / den,
                        time.perf_counter() - t0 + share, hessian_seconds=share)
        stats.append(st)
        logging.info("prune: stream read by %s: %d of %d channels kept (%d writers, %d readers), "
                     "error %.4f", pair.consumer, len(keep), width, len(pair.producers),
                     len(pair.consumers), st.rel_error)
    return kept, stats
