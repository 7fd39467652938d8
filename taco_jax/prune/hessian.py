"""Layer-wise Hessians ``H = 2XXᵀ/n`` from calibration batches, streamed and jitted (float32).

``HessianState(h, n)`` is an immutable pytree: ``init`` → ``update`` per batch → ``finalize``.
``h`` holds the running sum ``Σ 2xxᵀ`` per group (G, k, k); ``n`` the number of input columns.
``collect_hessians`` wraps the requested layers in taps, runs the model's forward pass (or one
segment of it, on that segment's cached inputs) once per batch under ``jax.jit`` (only the taps'
sums are outputs, so XLA drops the compute after the deepest tapped layer) and holds no more than
one batch of activations beyond its inputs.

``collect_paired`` also gives the cross-covariance ``C = 2X_r Xᵀ/n`` of one layer's inputs in a
reference model (X_r, e.g. the dense model) and in the model being pruned (X), over the same
images: what pruning toward the reference's outputs needs (``prune.targets``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from taco_jax import distributed
from taco_jax.models.paths import get_layer, set_layer
from taco_jax.prune.layout import groups, layer_inputs


class HessianState(NamedTuple):
    """Running Σ 2xxᵀ (G, k, k) and column count n (a float32 scalar)."""

    h: jax.Array
    n: jax.Array


def init(k: int, n_groups: int = 1, k_y: int | None = None) -> HessianState:
    """Zero sums (G, k, k), or (G, k_y, k) for the cross sums of ``update(..., Y=)``."""
    return HessianState(jnp.zeros((n_groups, k if k_y is None else k_y, k), jnp.float32),
                        jnp.zeros((), jnp.float32))


def update(state: HessianState, X: jax.Array, axis_name: str | None = None,
           Y: jax.Array | None = None) -> HessianState:
    """Add columns X (n, G, k) (or (n, k)); with ``axis_name``, psum the batch over devices.

    ``Y`` (n, G, k_y), the same columns seen elsewhere: add the cross sums Σ 2yxᵀ (G, k_y, k)
    instead (start them from ``init(k, G, k_y)``)."""
    X = X.astype(jnp.float32)
    Y = X if Y is None else Y.astype(jnp.float32)
    if X.ndim == 2:
        X, Y = X[:, None], Y.reshape(Y.shape[0], 1, -1)
    if X.shape[1] == 1:  # a plain 2-D product: XLA CPU runs the batched form ~2x slower
        h = 2.0 * lax.dot_general(Y[:, 0], X[:, 0], (((0,), (0,)), ((), ())),
                                  precision=lax.Precision.HIGHEST)[None]
    else:
        h = 2.0 * jnp.einsum("ngi,ngj->gij", Y, X, precision=lax.Precision.HIGHEST)
    n = jnp.float32(X.shape[0])
    if axis_name is not None:
        h, n = lax.psum(h, axis_name), lax.psum(n, axis_name)
    return HessianState(state.h + h, state.n + n)


def finalize(state: HessianState) -> jax.Array:
    """H = Σ 2xxᵀ / n, (G, k, k)."""
    return state.h / jnp.maximum(state.n, 1.0)


class HessianSum(nnx.Variable):
    """Variable type of a tap's running sums (so the jitted forward can return only these)."""


class LayerWrapper(nnx.Module):
    """Base of modules swapped in for a layer (``self.layer``) that must look like it: the model
    may read the layer's attributes (out_features, ...), so unknown attributes come from it."""

    def __getattr__(self, name):
        layer = vars(self).get("layer")
        if layer is None:
            raise AttributeError(name)
        return getattr(layer, name)


class Probe(LayerWrapper):
    """Wraps a layer; each call hands the layer's input to ``record`` first."""

    def __init__(self, layer: nnx.Module, record):
        self.layer = layer
        self.record = record

    def __call__(self, x: jax.Array) -> jax.Array:
        self.record(x)
        return self.layer(x)


class HessianTap(LayerWrapper):
    """Wraps a layer; each call adds the layer's input columns to its Hessian sums."""

    def __init__(self, layer: nnx.Module, k: int, n_groups: int, mesh=None):
        self.layer = layer
        s = init(k, n_groups)
        self.h = HessianSum(s.h)
        self.n = HessianSum(s.n)
        self.mesh = mesh

    def __call__(self, x: jax.Array) -> jax.Array:
        X = layer_inputs(self.layer, x)
        if self.mesh is None:
            s = update(HessianState(self.h.value, self.n.value), X)
        else:
            s = _sharded_update(self.mesh, HessianState(self.h.value, self.n.value), X)
        self.h.value, self.n.value = s.h, s.n
        return self.layer(x)


def _sharded_update(mesh, state: HessianState, X: jax.Array) -> HessianState:
    """Per-device partial sums over its slice of the columns, psum'd across the mesh."""
    from jax.sharding import PartitionSpec as P

    axis = mesh.axis_names[0]
    n_dev = mesh.devices.size
    pad = (-X.shape[0]) % n_dev
    X = jnp.pad(X, ((0, pad), (0, 0), (0, 0)))  # zero columns add nothing to Σxxᵀ
    fn = jax.shard_map(lambda s, x: update(s, x, axis), mesh=mesh,
                       in_specs=(P(), P(axis)), out_specs=P(), check_vma=False)
    s = fn(init(X.shape[-1], X.shape[1]), X)
    return HessianState(state.h + s.h, state.n + s.n - pad)


def input_dim(layer: nnx.Module) -> int:
    k = layer.kernel.value.shape
    return k[0] if len(k) == 2 else k[0] * k[1] * k[2]


def tap_layers(model: nnx.Module, layer_names: Iterable[str], mesh=None) -> dict[str, HessianTap]:
    """Replace each named layer by a HessianTap around it (undo with ``untap_layers``)."""
    taps = {}
    for name in layer_names:
        layer = get_layer(model, name)
        if not hasattr(layer, "kernel"):
            raise ValueError(f"layer {name!r} is a {type(layer).__name__}, not a Linear or Conv")
        taps[name] = HessianTap(layer, input_dim(layer), groups(layer), mesh)
        set_layer(model, name, taps[name])
    return taps


def untap_layers(model: nnx.Module, taps: dict[str, HessianTap]) -> None:
    for name, tap in taps.items():
        set_layer(model, name, tap.layer)


def segments_of(model: nnx.Module) -> list:
    """The model's forward chain (``model.segments()``), or ``[model]`` if it has none."""
    return list(model.segments()) if hasattr(model, "segments") else [model]


def _call(module: nnx.Module, x: jax.Array) -> jax.Array:
    return module(x)


@dataclasses.dataclass(frozen=True)
class _Nth:
    """Segment ``index`` of a whole model: the fallback for segments that are plain functions."""

    index: int

    def __call__(self, model: nnx.Module, x: jax.Array) -> jax.Array:
        return segments_of(model)[self.index](x)


def segment_module(model: nnx.Module, segment: int | None) -> tuple[nnx.Module, Callable]:
    """(module, fn) with ``fn(module, x)`` = ``segments_of(model)[segment](x)`` (the whole
    model for ``segment=None``), ``module`` the smallest one that holds the segment: the
    segment itself if it is a module, the owner of a bound method (``block.attn_half``), else
    the model. Jitting ``fn`` over ``module`` (static ``fn`` and graphdef) compiles one program
    for all alike blocks instead of one per segment index (ViT-S/16: 24 half blocks)."""
    if segment is None:
        return model, _call
    seg = segments_of(model)[segment]
    if isinstance(seg, nnx.Module):
        return seg, _call
    owner = getattr(seg, "__self__", None)
    if isinstance(owner, nnx.Module):
        return owner, seg.__func__
    return model, _Nth(segment)


def _forward_sums(graphdef, sums, rest, x, fn):
    module = nnx.merge(graphdef, sums, rest)
    fn(module, x)
    return nnx.state(module, HessianSum)


_jit_forward_sums = jax.jit(_forward_sums, static_argnums=(0, 4))


def run_taps(model: nnx.Module, batches: Iterable, mesh=None, segment: int | None = None) -> None:
    """One jitted forward pass per batch, accumulating into the model's HessianTaps.

    ``segment``: run only ``segments_of(model)[segment]`` on each batch (its cached inputs).
    The segment's module is split once: only the taps' sums change from batch to batch.
    """
    module, fn = segment_module(model, segment)
    graphdef, sums, rest = nnx.split(module, HessianSum, ...)
    if mesh is not None:
        sums, rest = distributed.replicated((sums, rest), mesh)
    for x in batches:
        x = jnp.asarray(x, jnp.float32)
        if mesh is not None:
            from jax.sharding import NamedSharding
            from jax.sharding import PartitionSpec as P

            if x.shape[0] % mesh.devices.size == 0:
                x = jax.device_put(x, NamedSharding(mesh, P(mesh.axis_names[0])))
        sums = _jit_forward_sums(graphdef, sums, rest, x, fn)
    nnx.update(module, sums)


def collect_hessians(model: nnx.Module, batches: Iterable, layer_names: Iterable[str],
                     mesh=None, segment: int | None = None) -> dict[str, jax.Array]:
    """name -> H = 2XXᵀ/n of the layer's inputs over ``batches`` (NHWC arrays, or with
    ``segment`` the inputs of ``segments_of(model)[segment]``, which must hold the layers).

    H is (k, k) for a Linear or ungrouped Conv (k = d_in or C_in·kh·kw) and (G, k, k) for a conv
    with G = ``feature_group_count`` > 1. The model runs in eval mode (BatchNorm running stats).
    ``mesh``: the columns are split over its devices and the partial sums psum'd; a mesh over
    several processes (``taco_jax.distributed``) takes this process's share of the images in
    ``batches``, runs them on its own devices and sums the partial sums over processes.
    """
    layer_names = list(layer_names)
    model.eval()
    local = distributed.local_mesh(mesh)
    taps = tap_layers(model, layer_names, local)
    try:
        run_taps(model, batches, local, segment)
    finally:
        untap_layers(model, taps)
    sums = {name: HessianState(tap.h.value, tap.n.value) for name, tap in taps.items()}
    if distributed.spans_processes(mesh):
        sums = jax.tree.map(jnp.asarray, distributed.sum_over_processes(sums))
    out = {}
    for name, state in sums.items():
        H = finalize(state)
        out[name] = H[0] if H.shape[0] == 1 else H
    return out


def _layer_columns(model: nnx.Module, name: str, x: jax.Array, segment: int | None) -> jax.Array:
    """The input columns (n, G, k) of layer ``name`` over every call while ``model`` (or its
    segment ``segment``) runs on ``x``."""
    layer = get_layer(model, name)
    got = []
    set_layer(model, name, Probe(layer, lambda v: got.append(layer_inputs(layer, v))))
    try:
        (model if segment is None else segments_of(model)[segment])(x)
    finally:
        set_layer(model, name, layer)
    return jnp.concatenate(got)


def _paired_sums(graphdef, state, ref_graphdef, ref_state, x, x_ref, segment, name, h, c):
    X = _layer_columns(nnx.merge(graphdef, state), name, x, segment)
    X_ref = _layer_columns(nnx.merge(ref_graphdef, ref_state), name, x_ref, segment)
    return update(h, X), update(c, X, Y=X_ref)


_jit_paired_sums = jax.jit(_paired_sums, static_argnums=(0, 2, 6, 7))


def collect_paired(model: nnx.Module, batches: Sequence, reference: nnx.Module,
                   reference_batches: Sequence, name: str, mesh=None,
                   segment: int | None = None) -> tuple[jax.Array, jax.Array]:
    """(H, C) of layer ``name``: H = 2XXᵀ/n of its inputs X (k, n) in ``model`` and the
    cross-covariance C = 2X_r Xᵀ/n (k_r, k) with its inputs X_r in ``reference`` (a model with a
    layer of the same name; k_r may differ from k), column for column over the same images.

    ``batches[i]`` and ``reference_batches[i]`` are the two models' inputs (to segment
    ``segment``, if given) for the same images. Grouped convs give (G, k, k) and (G, k_r, k).
    ``mesh``: batches that are split over this process's devices stay so (XLA sums over them);
    a mesh over several processes sums each process's share, as ``collect_hessians``.
    """
    model.eval()
    reference.eval()
    G, k = groups(get_layer(model, name)), input_dim(get_layer(model, name))
    h, c = init(k, G), init(k, G, input_dim(get_layer(reference, name)))
    graphdef, state = nnx.split(model)
    ref_graphdef, ref_state = nnx.split(reference)
    local = distributed.local_mesh(mesh)
    if local is not None:
        state = distributed.replicated(state, local)
        ref_state = distributed.replicated(ref_state, local)
    for x, x_ref in zip(batches, reference_batches, strict=True):
        h, c = _jit_paired_sums(graphdef, state, ref_graphdef, ref_state,
                                jnp.asarray(x, jnp.float32), jnp.asarray(x_ref, jnp.float32),
                                segment, name, h, c)
    if distributed.spans_processes(mesh):
        h, c = jax.tree.map(jnp.asarray, distributed.sum_over_processes((h, c)))
    H, C = finalize(h), finalize(c)
    return (H[0], C[0]) if G == 1 else (H, C)
