"""BatchNorm after pruning: re-estimated running statistics, and compensated weights re-scaled.

Pruning shifts each channel's mean and scale; the running statistics of the dense model then
normalise with the wrong values. ``reestimate`` sets every BatchNorm's running mean and variance
to their averages over ``images`` in batches, each batch normalised with its own statistics (as
in training), so every layer sees inputs normalised by the already-corrected layers before it.

``restore_scale``: a conv followed by a BatchNorm computes the same function at any per-channel
scale of its weights, but a recovery's Adam moves each weight by about the learning rate
whatever its size, so the scale sets the effective step (∝ lr / ‖w‖²). The solver's
compensation grows the kept weights 2–4x at 90% (16×16 tiles on the demo: r.m.s. 0.10 → 0.23–
0.46), which slowed the recovery enough to lose about 10 points (BUILD_NOTES); scaling them back to
their dense norm, the factor folded into the BatchNorm, keeps the function and the step.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from taco_jax.train import fit


def _batchnorms(model: nnx.Module) -> list[nnx.BatchNorm]:
    return [m for _, m in model.iter_modules() if isinstance(m, nnx.BatchNorm)]


@functools.partial(nnx.jit, static_argnames="preprocess")
def _batch_stats(model, x, preprocess):
    """Every BatchNorm's (mean, var) after one train-mode pass on ``preprocess(x)``; compiled
    once per model structure and ``preprocess`` (a caller re-estimating many times, like the
    output-error allocation, reuses it)."""
    model(preprocess(x))
    return [(bn.mean.value, bn.var.value) for bn in _batchnorms(model)]


def reestimate(model: nnx.Module, images: np.ndarray,
               preprocess: Callable[[jax.Array], jax.Array], batch_size: int = 256) -> int:
    """Set every BatchNorm's running mean/var to the mean over batches of ``images`` (N,H,W,C)
    of the per-batch statistics; the model is left in eval mode. Returns the BatchNorm count.

    ``batch_size`` is capped like an inference batch (``fit.eval_batch_size``: 32 images at
    224², then evened out): a train-mode ResNet-50 pass on 96 such images in one batch held
    2.0 GB more than the process, 0.8 GB in batches of 32 (BUILD_NOTES). Small images keep
    one batch of up to 256."""
    bns = _batchnorms(model)
    if not bns:
        return 0
    cap = fit.eval_batch_size(batch_size, images)
    if cap < min(batch_size, len(images)):  # capped: equal batches, often one program
        parts = -(-len(images) // cap)
        batch_size = -(-len(images) // parts)
    momenta = [bn.momentum for bn in bns]
    sums = None
    weights = 0
    try:
        for bn in bns:
            bn.momentum = 0.0  # running stats := this batch's statistics
        model.train()
        for start in range(0, len(images), batch_size):
            chunk = jnp.asarray(images[start:start + batch_size])
            stats = _batch_stats(model, chunk, preprocess)
            w = len(chunk)
            stats = [(m * w, v * w) for m, v in stats]
            sums = stats if sums is None else [(a + m, b + v) for (a, b), (m, v) in
                                               zip(sums, stats, strict=True)]
            weights += w
    finally:
        for bn, m in zip(bns, momenta, strict=True):
            bn.momentum = m
        model.eval()
    for bn, (m, v) in zip(bns, sums, strict=True):
        bn.mean.value = m / weights
        bn.var.value = v / weights
    return len(bns)


def restore_scale(model: nnx.Module, before: Mapping[str, np.ndarray],
                  kept: Mapping[str, np.ndarray] | None = None,
                  kept_out: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Scale each output channel of the convs in ``before`` that feed a BatchNorm
    (``shrink.batchnorm_after``) to the norm its weights had before the prune on the weights it
    kept, and fold the factor c into the BatchNorm (running mean·c, variance·c²) and the conv's
    bias: the function is unchanged (up to the BatchNorm's ε), the recovery's step is the dense
    weights' (module docstring). Others (no BatchNorm after them) are left as they are.

    ``before``: layer name -> its kernel before the prune, the same shape as now, or for a
    layer a structured cut shrank the dense kernel whose kept input channels (axis -2) are
    ``kept[name]`` and kept output channels (axis -1) ``kept_out[name]``
    (``shrink.kept_channels``). A channel with no kept non-zero weight keeps c = 1. Returns
    each rescaled layer's factors (C_out,)."""
    from taco_jax.models.paths import get_layer
    from taco_jax.models.shrink import batchnorm_after

    kept, kept_out = kept or {}, kept_out or {}
    norms = batchnorm_after(model)
    factors = {}
    for name, w0 in before.items():
        if name not in norms:
            continue
        conv, bn = get_layer(model, name), get_layer(model, norms[name])
        w1 = np.asarray(conv.kernel.get_value())
        w0 = np.asarray(w0)
        if name in kept:
            w0 = np.take(w0, kept[name], -2)
        if name in kept_out:
            w0 = np.take(w0, kept_out[name], -1)
        if w0.shape != w1.shape:
            raise ValueError(f"restore_scale: {name!r} has kernel {w1.shape}, its weights before "
                             f"the prune {w0.shape}" + ("" if name in kept or name in kept_out
                                                         else " (a structured cut needs kept)"))
        axes = tuple(range(w1.ndim - 1))
        r0 = np.sqrt(np.sum(np.where(w1 != 0, w0, 0).astype(np.float64) ** 2, axes))
        r1 = np.sqrt(np.sum(w1.astype(np.float64) ** 2, axes))
        c = np.where((r0 > 0) & (r1 > 0), r0 / np.where(r1 > 0, r1, 1), 1.0)
        conv.kernel.set_value(jnp.asarray(w1 * c.astype(w1.dtype)))
        if getattr(conv, "bias", None) is not None:
            b = np.asarray(conv.bias.get_value())
            conv.bias.set_value(jnp.asarray(b * c.astype(b.dtype)))
        mean, var = np.asarray(bn.mean.get_value()), np.asarray(bn.var.get_value())
        bn.mean.set_value(jnp.asarray(mean * c.astype(mean.dtype)))
        bn.var.set_value(jnp.asarray(var * (c ** 2).astype(var.dtype)))
        factors[name] = c
    return factors
