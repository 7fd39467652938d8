"""Sequential whole-model pruning: layers in forward order, each on inputs through pruned layers.

``prune_model(model, batches, config)`` finds the forward (call) order with one eager probe pass,
groups layers that read the same input with the same unfolding (q/k/v, a block's branches) so
they share one Hessian, then for each group: collect its Hessian over all ``batches`` through the
already-pruned model, solve every layer of the group, write the weights back, checkpoint.

Block-input caching (``segments.InputCache``): a model with ``segments()`` (every zoo family: stem,
blocks — ViT half blocks —, head: their composition is the forward pass) has the calibration inputs
of its current segment cached, so a group's Hessian costs one pass through its own segment, and the
cache moves on through each pruned segment once. Calibration cost is linear in depth; memory is one
segment input for all images (e.g. 1,000 ViT-S/16 images: 1000·197·384 floats = 0.3 GB). A segment
is jitted over its own module (``hessian.segment_module``), so alike blocks share one program. A
model without ``segments()`` is one segment (each group then reruns the forward pass).

``PruneConfig(targets="dense")``: each layer is solved toward the reference (dense) model's
outputs rather than its own (``prune.targets``); the reference's segment inputs are cached the
same way, beside the model's (twice the cache memory).

``batches`` must be re-iterable (e.g. a list of NHWC float arrays). The model is left in eval mode.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx
from tqdm.auto import tqdm

from taco_jax import distributed, memory
from taco_jax.models.paths import (
    body_layers,
    get_layer,
    named_layers,
    resolve_stem,
)
from taco_jax.models.shrink import (
    ShrinkPair,
    cuts_by_consumer,
    infer_pairs,
    residual_streams,
    shrink_pair,
)
from taco_jax.prune import checkpoint as ckpt
from taco_jax.prune.hessian import (
    collect_hessians,
    collect_paired,
)
from taco_jax.prune.layout import groups, kernel_from_matrix, layer_matrix, weight_matrix
from taco_jax.prune.patterns import (
    NM,
    Pattern,
    Structured,
    aligned_level,
    check_sparsity,
    parse_pattern,
    tiling_problem,
)
from taco_jax.prune.refit import refit_groups
from taco_jax.prune.result import LayerStats, PruneResult
from taco_jax.prune.segments import InputCache, forward_groups
from taco_jax.prune.solver import METHODS, check_finite, choose_method, prune_layer
from taco_jax.prune.streams import prune_streams
from taco_jax.prune.targets import dense_target

ALLOCATIONS = ("auto", "uniform", "global", "output", "magnitude")


@dataclasses.dataclass(frozen=True)
class PruneConfig:
    """What to prune and how. ``overrides``: layer name -> sparsity, or (pattern, sparsity).

    ``allocation``: "uniform" (every layer at ``sparsity``), or per-layer levels meeting the same
    total non-zero budget with least summed error (see ``allocate``), the errors measured at
    each layer ("global") or at the model's output ("output"); or "magnitude", the levels of
    one |w| threshold over all layers (global magnitude pruning's, no data); "auto" is "global",
    or "uniform" for an N:M pattern (one fixed level in every layer: nothing to allocate).
    ``overrides`` may name the model's input layer "stem" (``models.paths.resolve_stem``).
    ``prune_head``: also prune the model's ``head_name`` layer (default: keep it dense).
    ``pairs``: structured producer/consumer pairs (default: ``shrink.infer_pairs``).
    ``targets``: what each layer's pruned weights must reproduce on its (pruned-model) inputs:
    "self", the layer's own outputs on them (OBC/SparseGPT); or "dense", the reference (dense)
    model's outputs of that layer on the reference's own inputs (``prune.targets``), which also
    corrects the error of the layers pruned before it.
    ``refit``: after SparseGPT or ADMM picks a layer's mask, re-solve its kept weights exactly
    by least squares on that mask (``prune.refit``; 2–3x less layer error than SparseGPT's own
    weights at 50–90%, ADMM's are close already). Not for
    magnitude (the uncompensated baseline), OBC (already exact) or structured patterns.
    ``target_speedup``: structured patterns only; 0 = prune to ``sparsity`` (the share of the
    pairs' multiply-accumulates removed), else the level is the smallest whose model is
    measured this many times faster than dense (``prune.speed_budget``; TACO resolves it to a
    ``sparsity`` before pruning, and ``prune_model`` itself ignores it).
    """

    pattern: str | Pattern = "unstructured"
    sparsity: float = 0.5
    overrides: Mapping[str, float | tuple] = dataclasses.field(default_factory=dict)
    allocation: str = "uniform"
    blocksize: int = 128
    percdamp: float = 0.01
    method: str = "auto"
    prune_head: bool = False
    pairs: tuple[ShrinkPair, ...] | None = None
    allocation_grid: tuple[float, ...] = (0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)
    targets: str = "self"
    refit: bool = True
    target_speedup: float = 0.0
    stream_sparsity: float = 0.0
    channel_multiple: int = 8

    def __post_init__(self):
        parse_pattern(self.pattern)
        check_sparsity(self.sparsity)
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; allowed: {METHODS}")
        if self.allocation not in ALLOCATIONS:
            raise ValueError(f"allocation must be one of {ALLOCATIONS}, got {self.allocation!r}")
        if self.targets not in ("self", "dense"):
            raise ValueError(f"targets must be 'self' or 'dense', got {self.targets!r}")
        if (isinstance(parse_pattern(self.pattern), NM)
                and self.allocation in ("global", "output")):
            raise ValueError(f"allocation={self.allocation!r}: an N:M pattern ({self.pattern}) "
                             "has one fixed level in every layer, nothing to allocate; use "
                             "'auto' or 'uniform'")
        if self.allocation == "magnitude" and self.structured:
            raise ValueError("allocation='magnitude' (one |w| threshold over all layers) is for "
                             "unstructured, N:M and block patterns, got structured pattern "
                             f"{self.pattern!r}")
        if self.targets == "dense" and self.method == "magnitude":
            raise ValueError("targets='dense' needs a second-order method (it reshapes the "
                             "weights the solver prunes); magnitude pruning takes targets='self'")
        if self.target_speedup and (isinstance(self.target_speedup, bool)
                                    or not self.target_speedup > 1):
            raise ValueError(f"target_speedup must be > 1 (or 0: prune to sparsity), got "
                             f"{self.target_speedup!r}")
        if self.target_speedup and not self.structured:
            raise ValueError(f"target_speedup={self.target_speedup} needs pattern='structured' "
                             f"(smaller dense shapes); {self.pattern!r} keeps the model's shapes, "
                             "and on a dense runtime its zeros are not skipped")
        if isinstance(self.channel_multiple, bool) or not isinstance(self.channel_multiple, int) \
                or self.channel_multiple < 1:
            raise ValueError(f"channel_multiple must be an integer >= 1, got "
                             f"{self.channel_multiple!r}")
        if self.stream_sparsity:
            check_sparsity(self.stream_sparsity)
            if not self.structured:
                raise ValueError(f"stream_sparsity={self.stream_sparsity} needs "
                                 f"pattern='structured' (it cuts channels), got {self.pattern!r}")
        if self.targets == "dense" and self.structured:
            raise ValueError("targets='dense' is for unstructured, N:M and block patterns; "
                             f"structured pruning (pattern {self.pattern!r}) takes targets='self'")

    @property
    def structured(self) -> bool:
        """Whether the pattern removes whole channels / heads / neurons (cut shapes, no masks)."""
        return isinstance(parse_pattern(self.pattern), Structured)

    @property
    def resolved_allocation(self) -> str:
        """``allocation`` with "auto" resolved: "global", or "uniform" for an N:M pattern."""
        if self.allocation != "auto":
            return self.allocation
        return "uniform" if isinstance(parse_pattern(self.pattern), NM) else "global"


def _uncommitted(x: jax.Array) -> jax.Array:
    """``x`` via the host: on the default device, free to join any jitted computation."""
    return jnp.asarray(distributed.to_host(x))



# ----------------------------------------------------------------------------- helpers


def _layer_plan(model, config: PruneConfig, layers, sparsities) -> dict[str, tuple[Pattern, float]]:
    """Each layer's (pattern, level): the override, else its allocated or the uniform level;
    structured levels aligned to ``config.channel_multiple`` (``patterns.aligned_level``)."""
    base = parse_pattern(config.pattern)
    cuts = cuts_by_consumer(model, config.pairs) if config.structured else {}
    plan = {}
    for n in layers:
        spec = config.overrides.get(n, sparsities.get(n, config.sparsity))
        pat, s = (parse_pattern(spec[0]), spec[1]) if isinstance(spec, tuple) else (base, spec)
        s = check_sparsity(s)
        if isinstance(pat, Structured) and n in cuts:
            s = aligned_level(s, get_layer(model, n).in_features, cuts[n].group_size,
                              config.channel_multiple)
        plan[n] = (pat, s)
    return plan


def _rel_error(W0, W1, H) -> float:
    H = H if H.ndim == 3 else H[None]
    D = W0 - W1
    num = jnp.einsum("gri,gij,grj->", D, H, D)
    den = jnp.einsum("gri,gij,grj->", W0, H, W0)
    return float(num / jnp.maximum(den, 1e-30))


def _solve_layer(name, layer, H, pattern, sparsity, config, mesh, device=None, target=None):
    """Solve one Linear/Conv (grouped convs one group at a time): (W0, W1, keep, solve stats).

    ``device``: run the whole solve there (asynchronously: the caller may dispatch several
    layers to several devices before reading any result). ``target``: the weights to prune
    (G, d_out, k) instead of the layer's own (``targets.dense_target``); W0 is then those."""
    W0 = layer_matrix(layer) if target is None else target
    Hg = H if H.ndim == 3 else H[None]
    try:
        check_finite(W0, Hg)
    except ValueError as e:
        raise ValueError(f"prune: layer {name!r}: {e}") from None
    if device is not None:
        W0, Hg = jax.device_put((W0, Hg), device)
    method = choose_method(config.method, pattern, *W0.shape[1:])
    kw = dict(blocksize=config.blocksize, percdamp=config.percdamp, method=method)
    outs = [prune_layer(W0[g], Hg[g], pattern, sparsity, mesh=mesh, **kw)
            for g in range(W0.shape[0])] if W0.shape[0] <= 8 else None
    if outs is None:  # depthwise / many groups: one vmapped solve over the groups
        outs = _vmapped_groups(W0, Hg, pattern, sparsity, kw)
    W1 = jnp.stack([o[0] for o in outs])
    keep = jnp.stack([o[1] for o in outs])
    if config.refit and method in ("sparsegpt", "admm") and not isinstance(pattern, Structured):
        W1 = refit_groups(W0, Hg, keep, W1, percdamp=config.percdamp)
    return W0, W1, keep, [o[2] for o in outs]


def _damping(stats) -> tuple[float, int]:
    """The largest damping λ and Cholesky tries over a layer's group solves."""
    return max(float(s.damp) for s in stats), max(int(s.damp_tries) for s in stats)


def _vmapped_groups(W0, Hg, pattern, sparsity, kw):
    from taco_jax.prune.solver import _prune_core, prune_counts

    counts = jnp.asarray(prune_counts(pattern, sparsity, W0.shape[1], W0.shape[2],
                                      kw["blocksize"]))
    fn = jax.vmap(lambda w, h: _prune_core(w, h, counts, pattern=pattern, **kw))
    W1, keep, stats = fn(W0, Hg)
    return [(W1[g], keep[g], jax.tree.map(lambda s, g=g: s[g], stats))
            for g in range(W0.shape[0])]


def _write_kernel(layer, W1) -> None:
    layer.kernel.set_value(kernel_from_matrix(W1, layer.kernel.get_value().shape))


def _kernel_mask(layer, keep) -> np.ndarray:
    return np.asarray(kernel_from_matrix(keep, layer.kernel.get_value().shape))


def _log(st: LayerStats) -> None:
    logging.info("prune %-28s %-16s %-14s sparsity %.4f  rel.err %.3e  %.2fs%s", st.name,
                 "x".join(map(str, st.shape)), st.pattern, st.sparsity, st.rel_error, st.seconds,
                 f"  (damping raised to {st.damp:g} after {st.damp_tries} tries)"
                 if st.damp_tries > 1 else "")
    if st.damp_tries > 3:  # more than two increases: H is far from positive definite
        logging.warning("prune: layer %r needed its damping raised %d times (to %g x mean "
                        "diag H): its Hessian is near singular; more or more varied "
                        "calibration images help", st.name, st.damp_tries - 1, st.damp)


# ----------------------------------------------------------------------------- prune_model


def untileable(model: nnx.Module, config: PruneConfig, layers: Sequence[str]) -> dict[str, str]:
    """layer -> why its pattern (``config.pattern``, or its override's) cannot tile it, for the
    ``layers`` that cannot be tiled. Shapes only: an abstract model (``nnx.eval_shape``) serves,
    so a launcher checks a pattern before reading any data."""
    overrides = resolve_stem(model, dict(config.overrides))
    base = parse_pattern(config.pattern)
    out = {}
    for name in layers:
        spec = overrides.get(name)
        pattern = parse_pattern(spec[0]) if isinstance(spec, tuple) else base
        layer = get_layer(model, name)
        shape = jax.eval_shape(functools.partial(weight_matrix, n_groups=groups(layer)),
                               layer.kernel.value).shape
        if (why := tiling_problem(pattern, shape, config.blocksize)) is not None:
            out[name] = why
    return out


def default_layers(model: nnx.Module, config: PruneConfig) -> list[str]:
    """Every Linear/Conv, minus ``model.head_name`` unless ``prune_head``; structured: consumers."""
    if config.structured:
        return [p.consumer for p in (config.pairs or infer_pairs(model))]
    return list(named_layers(model) if config.prune_head else body_layers(model))


def prune_model(model: nnx.Module, batches: Sequence, config: PruneConfig, *,
                layers: Sequence[str] | None = None, checkpoint_dir: str | None = None,
                mesh: jax.sharding.Mesh | None = None,
                reference: nnx.Module | None = None,
                levels: Mapping[str, float] | None = None) -> PruneResult:
    """Prune ``model`` in place, layer by layer in forward order; see the module docstring.

    ``batches``: re-iterable NHWC float batches (read by the order probe, the global allocation
    and the input cache, which then holds them on the device). ``checkpoint_dir``:
    an orbax checkpoint after each group; a rerun with the same directory and config resumes
    there and gives the same result. ``mesh``: Hessians psum'd, row solves sharded over it, a
    group of several layers solved one layer per device. A mesh over several processes
    (``taco_jax.distributed``): every process calls this with the same model and config and
    its own share of the images in ``batches``; Hessians are summed over processes, and every
    process ends with the same pruned model (checkpoints then need a shared ``checkpoint_dir``).
    ``reference``: with ``config.targets == "dense"``, the model whose layer outputs are the
    targets (same layer names, e.g. the dense teacher; its input cache runs beside the
    model's); default: ``model`` as it is passed in. Ignored for targets "self".
    ``levels``: every layer's sparsity, allocated already for ``config`` (the speed budget's
    allocation at its level): used instead of measuring the error curves again.
    """
    if iter(batches) is batches:
        raise ValueError("batches must be re-iterable (e.g. a list of NHWC arrays): it is read "
                         f"more than once, got a one-shot {type(batches).__name__}")
    model.eval()
    if config.targets == "dense" and reference is None:
        reference = nnx.clone(model)  # before a resume restores partly pruned weights
    config = dataclasses.replace(config, allocation=config.resolved_allocation,
                                 overrides=resolve_stem(model, dict(config.overrides)))
    names = list(layers) if layers is not None else default_layers(model, config)
    for n in names:
        get_layer(model, n)  # a KeyError listing the valid names
    first = next(iter(batches), None)
    if first is None:
        raise ValueError("prune_model needs at least one calibration batch")

    sparsities: dict[str, float] = {}
    if levels is not None:
        if missing := [n for n in names if n not in levels]:
            raise ValueError(f"prune_model: levels has no sparsity for {missing}")
        sparsities = {n: float(levels[n]) for n in names}
    elif config.allocation != "uniform":
        from taco_jax.prune.allocate import allocate_for_model

        sparsities = allocate_for_model(model, batches, config, names, mesh=mesh)
    plan = _layer_plan(model, config, names, sparsities)
    pairs = cuts_by_consumer(model, config.pairs)

    for n, (pat, _) in plan.items():
        if isinstance(pat, Structured) and n not in pairs:
            raise ValueError(f"structured pruning of {n!r} needs a producer/consumer pair; "
                             f"known consumers: {sorted(pairs)}")
    order = forward_groups(model, np.asarray(first)[:2], names)
    result = PruneResult(masks={}, stats=[], sparsities={n: s for n, (_, s) in plan.items()})
    start = 0
    if checkpoint_dir is not None:
        start = ckpt.restore(checkpoint_dir, model, result, config, pairs)
        if start:
            logging.info("prune: resumed from %s after %d of %d groups", checkpoint_dir, start,
                         len(order))
    if config.stream_sparsity and not any(p.consumer in result.kept
                                          for p in residual_streams(model)):
        kept, stats = prune_streams(model, batches, config.stream_sparsity, method=config.method,
                                    percdamp=config.percdamp, mesh=mesh,
                                    channel_multiple=config.channel_multiple)
        result.kept.update(kept)
        result.stats.extend(stats)
        if checkpoint_dir is not None:
            ckpt.save(checkpoint_dir, 0, model, result, config)

    sizes = [len(g) for _, g in order]
    bar = tqdm(total=sum(sizes), initial=sum(sizes[:start]), desc="prune", unit="layer")
    cache = InputCache(model, batches, distributed.local_mesh(mesh))
    budget = memory.ProgramBudget()
    if config.targets == "dense":
        reference.eval()
        ref_cache = InputCache(reference, batches, distributed.local_mesh(mesh))
    for gi in range(start, len(order)):
        segment, group = order[gi]
        todo = []
        for n in group:
            pat = plan[n][0]
            shape = layer_matrix(get_layer(model, n)).shape
            if (why := tiling_problem(pat, shape, config.blocksize)) is not None:
                logging.warning("prune: %s left dense: %s", n, why)
                bar.update(1)
            else:
                todo.append(n)
        if todo:
            t0 = time.perf_counter()
            if config.targets == "dense":
                H, C = collect_paired(model, cache.at(segment), reference,
                                      ref_cache.at(segment), todo[0], mesh=mesh,
                                      segment=segment)
            else:
                H, C = collect_hessians(model, cache.at(segment), todo[:1], mesh=mesh,
                                        segment=segment)[todo[0]], None
            if mesh is not None:  # back as uncommitted arrays, like the model's own
                H, C = _uncommitted(H), None if C is None else _uncommitted(C)
            targets = {} if C is None else {
                n: dense_target(layer_matrix(get_layer(model, n)),
                                layer_matrix(get_layer(reference, n)), H, C, config.percdamp)
                for n in todo}
            jax.block_until_ready((H, C, targets))  # so the time is the collection's own
            share = (time.perf_counter() - t0) / len(todo)
            devices = _layer_devices(todo, plan, mesh)
            if devices is None:
                for n in todo:
                    _prune_one(model, n, H, plan[n], config, pairs, result, mesh, share,
                               targets.get(n))
                    bar.update(1)
            else:
                _prune_across_devices(model, todo, H, plan, config, result, devices, share,
                                      targets)
                bar.update(len(todo))
        if checkpoint_dir is not None:
            ckpt.save(checkpoint_dir, gi + 1, model, result, config)
        budget.check()
    bar.close()
    return result


def _layer_devices(todo, plan, mesh) -> list | None:
    """Across-layer parallelism: a group of several layers (they share the Hessian and nothing
    else), none structured, is solved one whole layer per device of this process's part of the
    mesh (round robin, no communication); otherwise None (each layer in turn, rows sharded).

    Why not rows: the solve walks d_in columns one after another, each a small rank-1 update,
    so on an accelerator a layer takes about as long on a row slice as on all rows; L layers
    at once on L devices then take 1/L of the time of L row-sharded solves in turn."""
    local = distributed.local_mesh(mesh)
    if local is None or len(todo) < 2:
        return None
    if any(isinstance(plan[n][0], Structured) for n in todo):
        return None
    devices = list(local.devices.flat)
    return [devices[i % len(devices)] for i in range(len(todo))]


def _prune_across_devices(model, todo, H, plan, config, result, devices, extra_seconds,
                          targets):
    """Dispatch every layer's solve to its device, then write the results back in order."""
    t0 = time.perf_counter()
    solved = [_solve_layer(n, get_layer(model, n), H, *plan[n], config, None, device=d,
                           target=targets.get(n))
              for n, d in zip(todo, devices, strict=True)]
    jax.block_until_ready([s[1] for s in solved])
    seconds = (time.perf_counter() - t0) / len(todo) + extra_seconds
    for n, (W0, W1, keep, stats) in zip(todo, solved, strict=True):
        layer, (pat, _) = get_layer(model, n), plan[n]
        W0, W1, keep = (_uncommitted(a) for a in (W0, W1, keep))
        _record(model, n, pat, str(pat), W0, W1, keep, _rel_error(W0, W1, H), _damping(stats),
                result, seconds, extra_seconds, tuple(layer.kernel.get_value().shape))


def _prune_one(model, name, H, plan_entry, config, pairs, result, mesh, extra_seconds,
               target=None) -> None:
    pat, s = plan_entry
    layer = get_layer(model, name)
    t0 = time.perf_counter()
    in_before = layer.in_features
    if isinstance(pat, Structured):  # one unit = group_size channels x kernel positions
        pair = pairs[name]
        unit = layer_matrix(layer).shape[2] // in_before * pair.group_size
        pat = Structured(unit)
    W0, W1, keep, stats = _solve_layer(name, layer, H, pat, s, config, mesh, target=target)
    if mesh is not None:  # row-sharded over the mesh: gathered, so the model stays usable
        W1, keep = _uncommitted(W1), _uncommitted(keep)  # by any later jit (one device set)
    shape = tuple(layer.kernel.get_value().shape)
    err = _rel_error(W0, W1, H)
    label = str(pat)
    if isinstance(pat, Structured):
        kept_units = np.flatnonzero(np.asarray(keep[0, 0]).reshape(-1, unit).all(1))
        kept = (kept_units[:, None] * pair.group_size + np.arange(pair.group_size)).ravel()
        _write_kernel(layer, W1)
        shrink_pair(model, pair, kept)
        result.kept[name] = kept
        label = "structured" + (f"{pairs[name].group_size}" if pairs[name].group_size > 1 else "")
        st = LayerStats(name, shape, label, 1.0 - len(kept) / in_before, err,
                        time.perf_counter() - t0 + extra_seconds, *_damping(stats),
                        extra_seconds)
        result.stats.append(st)
        _log(st)
        return
    _record(model, name, pat, label, W0, W1, keep, err, _damping(stats), result,
            time.perf_counter() - t0 + extra_seconds, extra_seconds, shape)


def _record(model, name, pat, label, W0, W1, keep, err, damping, result, seconds,
            extra_seconds, shape) -> None:
    """Write a solved (unstructured / N:M / block) layer's weights, mask and stats."""
    layer = get_layer(model, name)
    _write_kernel(layer, W1)
    result.masks[name] = _kernel_mask(layer, keep)
    zeros = float(1.0 - np.mean(result.masks[name]))
    st = LayerStats(name, shape, label, zeros, err, seconds, *damping, extra_seconds)
    result.stats.append(st)
    _log(st)


# ----------------------------------------------------------------------------- masks


@nnx.jit
def _apply_masks(model: nnx.Module, masks: dict[str, jax.Array]) -> None:
    for name, m in masks.items():
        k = get_layer(model, name).kernel
        k.set_value(jnp.where(m, k.get_value(), 0).astype(k.get_value().dtype))


def apply_masks(model: nnx.Module, masks: Mapping[str, np.ndarray]) -> None:
    """Zero every pruned weight in place: one jitted call over all masked kernels (True = keep)."""
    _apply_masks(model, {n: jnp.asarray(m) for n, m in masks.items()})
