"""Global per-layer sparsity from measured error curves under a total budget (OBC/SPDY-style).

1. ``error_curves``: each layer pruned alone at every sparsity of a grid (solved on the dense
   model's Hessians), scored by its relative error ‖WX−ŴX‖²/‖WX‖² ("layer") or by the KL
   between the model's predictions before and after ("output": the error as the task sees it).
2. ``allocate_sparsity``: one grid level per layer minimising the summed error subject to
   Σ cost ≤ budget (cost = non-zero parameters, or FLOPs for structured), solved exactly on a
   discretised budget by dynamic programming.

``threshold_levels`` is the data-free alternative, classical global magnitude pruning (GMP): the
levels one |w| threshold over all layers gives.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx
from tqdm.auto import tqdm

from taco_jax import distributed, memory
from taco_jax.models.paths import get_layer
from taco_jax.prune.hessian import Probe, collect_hessians
from taco_jax.prune.layout import kernel_from_matrix, layer_inputs, layer_matrix
from taco_jax.prune.patterns import NM, Block, Structured, parse_pattern, tiling_problem
from taco_jax.prune.segments import InputCache, forward_groups
from taco_jax.prune.solver import prune_layer_levels
from taco_jax.train import batchnorm, fit, losses

MEASURES = ("layer", "output")


def allocate_sparsity(errors: Mapping[str, Sequence[float]], costs: Mapping[str, Sequence[float]],
                      grid: Sequence[float], budget: float, resolution: int = 4000
                      ) -> dict[str, float]:
    """Pick a level per layer: min Σ errors[name][i] s.t. Σ costs[name][i] ≤ budget.

    ``costs[name][i]`` is what the layer keeps at ``grid[i]`` (non-zeros or FLOPs). Costs are
    rounded up to ``budget/resolution`` units, so the result never exceeds the budget. Where
    the rounding leaves nothing within ``resolution`` units (a budget the allocations only just
    meet, e.g. every layer at the grid's top level), the choice is made among the allocations
    at most one unit per layer over it whose exact cost is within the budget.
    """
    names = list(errors)
    if budget <= 0:
        raise ValueError(f"budget must be > 0, got {budget}")
    unit = budget / resolution
    cap = resolution + len(names)  # the rounding adds under one unit per layer
    best = np.full(cap + 1, np.inf)
    best[0] = 0.0
    exact = np.zeros(cap + 1)  # the exact cost of each state's best allocation
    choice = []
    for n in names:
        e = np.asarray(errors[n], np.float64)
        cost = np.asarray(costs[n], np.float64)
        c = np.ceil(cost / unit - 1e-9).astype(int)
        new, new_exact = np.full(cap + 1, np.inf), np.zeros(cap + 1)
        arg = np.zeros(cap + 1, int)
        for i in range(len(grid)):
            if c[i] > cap:
                continue
            cand = np.full(cap + 1, np.inf)
            cand[c[i]:] = best[: cap + 1 - c[i]] + e[i]
            better = cand < new
            new[better], arg[better] = cand[better], i
            new_exact[better] = (exact[: cap + 1 - c[i]] + cost[i])[better[c[i]:]]
        best, exact = new, new_exact
        choice.append(arg)
    within = best[: resolution + 1]
    if np.isfinite(within).any():
        b = int(np.argmin(within))
    else:
        fits = np.isfinite(best) & (exact <= budget * (1 + 1e-9))
        if not fits.any():
            raise ValueError(f"no allocation meets the budget {budget:g}; the grid's highest "
                             f"sparsity {max(grid)} is too low")
        b = int(np.argmin(np.where(fits, best, np.inf)))
    out = {}
    for n, arg in zip(reversed(names), reversed(choice), strict=True):
        i = arg[b]
        out[n] = float(grid[i])
        b -= int(np.ceil(np.asarray(costs[n], np.float64)[i] / unit - 1e-9))
    return {n: out[n] for n in names}


def _solved_levels(W: jax.Array, H: jax.Array, pattern, grid: Sequence[float], **solve):
    """Yield (W pruned at s, relative layer error at s) for each grid sparsity ``s``.

    W (G, rows, cols) and H (cols, cols) or (G, cols, cols): each group solved on its own, the
    error ‖ΔW X‖²/‖W X‖² pooled over the groups."""
    Hg = H if H.ndim == 3 else H[None]
    # ‖W_g X‖² per group, once (a BLAS product: a three-operand np.einsum loops naively)
    norms = [float(np.sum((w @ np.float64(h)) * w))
             for w, h in zip(np.float64(W), Hg, strict=True)]
    den = max(sum(norms), 1e-30)
    solved = [prune_layer_levels(W[g], Hg[g], pattern, grid, **solve)  # [group][level]
              for g in range(W.shape[0])]
    for i in range(len(grid)):
        num = sum(float(levels[i][2].rel_error) * norm
                  for levels, norm in zip(solved, norms, strict=True))
        yield jnp.stack([levels[i][0] for levels in solved]), num / den


def _output_kl(model, batches, reference: list[np.ndarray], mesh) -> float:
    """Mean over the images of KL(softmax(reference logits) ‖ softmax(model logits)), summed
    over processes when ``mesh`` spans several."""
    total = count = 0.0
    for x, ref in zip(batches, reference, strict=True):
        logits = _logits(model, x)
        total += float(losses.kd_kl(logits, ref, 1.0)) * len(ref)  # KL(ref ‖ model), T = 1
        count += len(ref)
    if distributed.spans_processes(mesh):
        total, count = (float(v) for v in distributed.sum_over_processes(
            (np.asarray(total), np.asarray(count))))
    return total / max(count, 1.0)


def _logits(model, x) -> np.ndarray:
    """Eval-mode logits of one preprocessed calibration batch (fit's one compiled forward)."""
    return fit.predict_logits(model, jnp.asarray(x, jnp.float32), _identity, batch_size=len(x))


def _identity(x: jax.Array) -> jax.Array:
    """The calibration batches are preprocessed already; one function object, so BatchNorm
    re-estimation compiles once for all layers and levels."""
    return x


def error_curves(model, batches, names: Sequence[str], pattern, grid: Sequence[float], *,
                 measure: str = "layer", blocksize: int = 128, percdamp: float = 0.01,
                 method: str = "sparsegpt", mesh=None) -> dict[str, np.ndarray]:
    """name -> error at each grid sparsity, each layer pruned alone on the dense model.

    ``measure``: "layer", the layer's relative error ‖WX−ŴX‖²/‖WX‖² (Hessians collected
    segment by segment, ``segments.InputCache``, one group's alive at a time); or "output",
    the model's mean KL(dense predictions ‖ predictions with only this layer pruned) over
    ``batches``, BatchNorm statistics re-estimated on them first as the pipeline does after
    pruning (one or two more passes per layer and level), which weighs each layer by what its
    error does to the output. The model is given back unchanged.
    """
    if measure not in MEASURES:
        raise ValueError(f"unknown error measure {measure!r}; allowed: {MEASURES}")
    batches = list(batches)
    if not batches:
        raise ValueError("error_curves needs at least one calibration batch, got none")
    model.eval()
    reference = stats = images = None
    if measure == "output":
        reference = [_logits(model, x) for x in batches]
        if jax.tree.leaves(nnx.state(model, nnx.BatchStat)):  # re-estimated after each trial
            stats = jax.tree.map(jnp.copy, nnx.state(model, nnx.BatchStat))
            images = np.concatenate([np.asarray(x) for x in batches])
    solve = dict(blocksize=blocksize, percdamp=percdamp, method=method, mesh=mesh)
    # Segment by segment through the dense model: one group's Hessian alive at a time
    # (ResNet-50: 0.46 GiB for all 53 layers at once).
    order = forward_groups(model, np.asarray(batches[0])[:2], names)
    cache = InputCache(model, batches, distributed.local_mesh(mesh))
    out = {n: np.zeros(len(grid)) for n in names}  # a layer never called costs nothing
    budget = memory.ProgramBudget()
    bar = tqdm(total=sum(len(g) for _, g in order), desc=f"allocation: {measure} error curves",
               unit="layer", mininterval=2.0)
    for segment, group in order:
        H = collect_hessians(model, cache.at(segment), group[:1], mesh=mesh,
                             segment=segment)[group[0]]
        for n in group:
            out[n] = _curve(model, n, H, pattern, grid, solve, measure, batches, reference,
                            stats, images, mesh)
            bar.update(1)
        del H
        budget.check()
    bar.close()
    return out


def _curve(model, name, H, pattern, grid, solve, measure, batches, reference, stats, images,
           mesh) -> np.ndarray:
    """One layer's errors at each grid level, the model given back unchanged."""
    layer = get_layer(model, name)
    kernel = layer.kernel.get_value()
    errs = []
    try:
        for Wp, rel in _solved_levels(layer_matrix(layer), H, pattern, grid, **solve):
            if measure == "output":
                layer.kernel.set_value(kernel_from_matrix(Wp, kernel.shape).astype(kernel.dtype))
                if stats is not None:
                    batchnorm.reestimate(model, images, _identity)
                rel = _output_kl(model, batches, reference, mesh)
            errs.append(rel)
    finally:
        layer.kernel.set_value(kernel)
        if stats is not None:
            nnx.update(model, stats)
    return np.asarray(errs)


def positions_per_image(model, x, names: Sequence[str]) -> dict[str, int]:
    """Output positions per image of each layer (tokens, or H'·W' for convs)."""
    from taco_jax.models.paths import set_layer

    out = {}
    layers = {n: get_layer(model, n) for n in names}
    for n, layer in layers.items():
        rec = lambda v, n=n, layer=layer: out.setdefault(n, layer_inputs(layer, v).shape[0])
        set_layer(model, n, Probe(layer, rec))
    try:
        model(np.asarray(x[:1], np.float32))
    finally:
        for n, layer in layers.items():
            set_layer(model, n, layer)
    return out


def threshold_levels(model, names: Sequence[str], pattern, sparsity: float, blocksize: int = 128
                     ) -> dict[str, float]:
    """Per-layer sparsities of global magnitude pruning: the fraction of each layer's units
    (weights; r×c tiles for a block pattern, scored by their summed w²) among the
    ``floor(sparsity · all units)`` smallest over all ``names`` together. No data: the baseline
    of Zhu & Gupta / Gale et al. Weights already zero rank first, so a gradual schedule keeps
    them. A layer the threshold would empty keeps its largest unit (the budget is then missed by
    those few units); layers the pattern cannot tile are left out (``prune_model`` leaves them
    dense); N:M fixes its own level. (name -> sparsity)"""
    pattern = parse_pattern(pattern)
    if isinstance(pattern, Structured):
        raise ValueError("threshold (global magnitude) levels are for unstructured, N:M and "
                         f"block patterns, got structured {pattern}")
    if isinstance(pattern, NM):
        return {n: float(sparsity) for n in names}
    scores = {}
    for n in names:
        W = np.asarray(layer_matrix(get_layer(model, n)), np.float64)  # (G, d_out, d_in)
        if tiling_problem(pattern, W.shape, blocksize) is not None:
            continue
        if isinstance(pattern, Block):
            G, R, C = W.shape
            W = (W**2).reshape(G, R // pattern.r, pattern.r, C // pattern.c, pattern.c)
            scores[n] = W.sum((2, 4)).ravel()
        else:
            scores[n] = (W**2).ravel()
    if not scores:
        return {}
    flat = np.concatenate(list(scores.values()))
    k = int(np.floor(sparsity * len(flat) + 1e-6))
    pruned = np.zeros(len(flat), bool)
    pruned[np.argsort(flat, kind="stable")[:k]] = True
    out, start = {}, 0
    for n, sc in scores.items():  # a layer keeps at least one unit (the solver needs s < 1)
        out[n] = min(int(pruned[start:start + len(sc)].sum()), len(sc) - 1) / len(sc)
        start += len(sc)
    return out


def curve_method(method: str) -> str:
    """The solver of the error curves: magnitude's own for magnitude pruning, else SparseGPT
    (OBC's curves took 174 s of a 526 s demo prune; with SparseGPT's the OBC prune gave the
    same one-shot top-1 on the demo, 92.7% at 90%)."""
    return "magnitude" if method == "magnitude" else "sparsegpt"


def allocate_for_model(model, batches, config, names: Sequence[str], mesh=None
                       ) -> dict[str, float]:
    """Per-layer sparsities meeting ``config.sparsity`` over ``names`` in total (parameters;
    FLOPs for structured, counting the producer outputs a consumer's cut removes): from the
    error curves, or for ``config.allocation == "magnitude"`` from one magnitude threshold."""
    return allocator(model, batches, config, names, mesh)(config.sparsity)


def allocator(model, batches, config, names: Sequence[str], mesh=None
              ) -> Callable[[float], dict[str, float]]:
    """``allocate_for_model`` as a function of the total sparsity: the error curves (the costly
    part) are measured once, each call only re-solves the allocation (``speed_budget`` tries
    several levels). "uniform" gives every layer the level."""
    pattern = parse_pattern(config.pattern)
    if config.allocation == "uniform":
        return lambda sparsity: {n: float(sparsity) for n in names}
    if config.allocation == "magnitude":
        def by_threshold(sparsity: float) -> dict[str, float]:
            alloc = threshold_levels(model, names, pattern, sparsity, config.blocksize)
            logging.info("prune: global magnitude threshold levels at %.3f over %d layers: %s",
                         sparsity, len(alloc),
                         ", ".join(f"{n}={s:.2f}" for n, s in alloc.items()))
            return alloc
        return by_threshold
    grid = tuple(sorted(set(config.allocation_grid)))
    model.eval()
    measure = "output" if config.allocation == "output" else "layer"
    curves = error_curves(model, batches, names, pattern, grid, measure=measure,
                          blocksize=config.blocksize, percdamp=config.percdamp,
                          method=curve_method(config.method), mesh=mesh)
    size = {n: int(np.prod(get_layer(model, n).kernel.get_value().shape)) for n in names}
    if isinstance(pattern, Structured):
        from taco_jax.models.shrink import cuts_by_consumer

        pairs = cuts_by_consumer(model, config.pairs)
        first = next(iter(batches))
        pos = positions_per_image(model, first,
                                  [*names, *(q for n in names for q in pairs[n].producers)])
        weight = {n: size[n] * pos[n] + sum(
            np.prod(get_layer(model, q).kernel.get_value().shape) * pos[q]
            for q in pairs[n].producers) for n in names}
    else:
        weight = size
    costs = {n: [weight[n] * (1 - s) for s in grid] for n in names}

    def by_errors(sparsity: float) -> dict[str, float]:
        alloc = allocate_sparsity(curves, costs, grid, (1 - sparsity) * sum(weight.values()))
        logging.info("prune: allocation from %s errors at %.3f over %d layers: %s", measure,
                     sparsity, len(names), ", ".join(f"{n}={s:.2f}" for n, s in alloc.items()))
        return alloc
    return by_errors
