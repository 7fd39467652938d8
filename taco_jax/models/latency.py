"""Measured forward latency of a model on the current default device (compilation excluded).

One timer for every report (TACO, DC-ViT, transfer, the model benchmark): the eval forward is
jitted and compiled ahead of time, run ``warmup`` times, then ``repeats`` timed calls each ending
in ``block_until_ready``. The median is the figure to report; min and max show the spread.
``interleaved_latency`` times several models in turns, for comparisons on a loaded machine, and
``paired_latency`` each of several models against a reference timed just before it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx


def _compiled(model: nnx.Module, x: jax.Array):
    model.eval()
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x)).lower(state, x).compile()
    return lambda: forward(state, x).block_until_ready()


def model_latency(model: nnx.Module, x: jax.Array, *, repeats: int = 10,
                  warmup: int = 2) -> dict[str, float]:
    """Seconds per eval forward of ``model`` on ``x`` (B, H, W, C): {median, min, max, batch}.

    The model is put in eval mode (BatchNorm running stats, no dropout) and left so.
    """
    out = interleaved_latency([model], x, repeats=repeats, warmup=warmup)[0]
    del out["times"]
    return out


def interleaved_latency(models: Sequence[nnx.Module], x: jax.Array, *, repeats: int = 10,
                        warmup: int = 2) -> list[dict[str, float]]:
    """``model_latency`` of several models, timed call by call in turn (m0, m1, ..., m0, ...).

    On a shared machine the load drifts; calls adjacent in time see nearly the same load, so
    per-repeat ratios between models (``times``: each model's list of seconds) are far steadier
    than ratios of separately measured medians. A model may appear more than once (e.g. a
    reference between every other model); it is compiled once and timed at each position.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats}, {warmup}")
    x = jnp.asarray(x)
    compiled: dict[int, object] = {}
    for m in models:
        if id(m) not in compiled:
            compiled[id(m)] = _compiled(m, x)
    calls = [compiled[id(m)] for m in models]
    for _ in range(warmup):
        for call in calls:
            call()
    times: list[list[float]] = [[] for _ in calls]
    for _ in range(repeats):
        for call, t in zip(calls, times, strict=True):
            start = time.perf_counter()
            call()
            t.append(time.perf_counter() - start)
    return [{"median": statistics.median(t), "min": min(t), "max": max(t),
             "batch": int(x.shape[0]), "times": t} for t in times]


def paired_latency(dense: nnx.Module, models: Sequence[nnx.Module], x: jax.Array, *,
                   repeats: int = 20, warmup: int = 2) -> list[dict[str, float]]:
    """Per model: median seconds of ``dense`` and the model on ``x``, and the latency reduction
    1 − median over repeats of (model time / the dense time just before it).

    One interleaved session, dense before every model (d, m1, d, m2, …, d, m1, …): all models
    are measured in the same period of a drifting load, each against its adjacent dense call.
    """
    order = [m for model in models for m in (dense, model)]
    timed = interleaved_latency(order, x, repeats=repeats, warmup=warmup)
    out = []
    for d, m in zip(timed[::2], timed[1::2], strict=True):
        ratio = statistics.median(b / a for a, b in zip(d["times"], m["times"], strict=True))
        out.append({"dense": d["median"], "compressed": m["median"], "reduction": 1.0 - ratio,
                    "dense_min": d["min"], "compressed_min": m["min"], "batch": d["batch"],
                    "repeats": repeats})
    return out
