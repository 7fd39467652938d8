"""The model's forward pass in segments, for calibration that streams: the layers grouped by the
input they read, and each segment's calibration inputs cached and moved forward once.

``forward_groups`` finds the call order with one eager probe pass and groups layers that read the
same input with the same unfolding (q/k/v, a block's branches: one Hessian for the group).
``InputCache`` holds the current segment's inputs for all images; ``at(i)`` runs them through
the segments before ``i`` (each jitted over its own module, ``hessian.segment_module``, so alike
blocks share one program). Sequential pruning (``sequential``) and the allocation's error curves
(``allocate``) both walk a model this way, so only one segment's Hessians and inputs are alive
at a time.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from absl import logging
from flax import nnx

from taco_jax import distributed
from taco_jax.models.paths import get_layer, set_layer
from taco_jax.prune.hessian import Probe, segment_module, segments_of


def _geometry(layer) -> tuple:
    if isinstance(layer, nnx.Linear):
        return ("linear", layer.in_features)
    return ("conv", tuple(layer.kernel_size), str(layer.strides), str(layer.padding),
            str(layer.kernel_dilation), layer.feature_group_count, layer.in_features)


def forward_groups(model: nnx.Module, x: jax.Array, names: Sequence[str]
                   ) -> list[tuple[int, list[str]]]:
    """(segment index, names) in call order: one group per (input array, unfolding geometry).

    Identity, not value: two blocks that happen to compute equal values (e.g. residual blocks at
    a zero-initialised BatchNorm) must stay separate; q/k/v get the very same array object.
    """
    calls: list[tuple[int, str, jax.Array]] = []  # holds the arrays, so no id is reused
    layers = {n: get_layer(model, n) for n in names}
    segment = [0]
    for n, layer in layers.items():
        set_layer(model, n, Probe(layer, lambda v, n=n: calls.append((segment[0], n, v))))
    try:
        y = jnp.asarray(x, jnp.float32)
        for i, fn in enumerate(segments_of(model)):
            segment[0] = i
            y = fn(y)
    finally:
        for n, layer in layers.items():
            set_layer(model, n, layer)
    out: list[tuple[int, list[str]]] = []
    keys: list[tuple] = []
    seen = set()
    for si, n, v in calls:
        if n in seen:
            continue
        seen.add(n)
        key = _geometry(layers[n])
        for i, (k, ref) in enumerate(keys):
            if k == key and ref is v:
                out[i][1].append(n)
                break
        else:
            keys.append((key, v))
            out.append((si, [n]))
    missing = set(names) - seen
    if missing:
        logging.warning("prune: layers never called in the forward pass, left dense: %s",
                        sorted(missing))
    return out


def _segment_forward(graphdef, state, x, fn):
    return fn(nnx.merge(graphdef, state), x)


_jit_segment_forward = jax.jit(_segment_forward, static_argnums=(0, 3))


class InputCache:
    """Calibration inputs of segment ``index``, computed from the images through the (pruned)
    segments before it; ``at(i)`` moves forward, each segment run once per image.

    ``mesh`` (this process's devices): each batch whose size divides evenly is split over
    them, so the cache and its forward passes are data parallel."""

    def __init__(self, model: nnx.Module, batches: Sequence, mesh=None):
        self.model = model
        self.mesh = mesh
        self.index = 0
        self.inputs = [_spread(jnp.asarray(b, jnp.float32), mesh) for b in batches]

    def at(self, segment: int) -> list[jax.Array]:
        if segment < self.index:
            raise ValueError(f"input cache is at segment {self.index}, cannot go back to "
                             f"{segment}")
        while self.index < segment:
            module, fn = segment_module(self.model, self.index)
            graphdef, state = nnx.split(module)
            if self.mesh is not None:
                state = distributed.replicated(state, self.mesh)
            self.inputs = [_jit_segment_forward(graphdef, state, x, fn) for x in self.inputs]
            self.index += 1
        return self.inputs


def _spread(x: jax.Array, mesh) -> jax.Array:
    if mesh is None or x.shape[0] % mesh.devices.size:
        return x
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    return jax.device_put(x, NamedSharding(mesh, P(mesh.axis_names[0])))
