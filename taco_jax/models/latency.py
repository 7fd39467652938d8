"""Measured forward latency of a model on the current default device (compilation excluded).

One timer for every report (TACO, DC-ViT, transfer, the model benchmark): the eval forward is
jitted and compiled ahead of time, run ``warmup`` times, then ``repeats`` timed calls each ending
in ``block_until_ready``. The median is the figure to report; min and max show the spread.
``interleaved_latency`` times several models in turns, for comparisons on a loaded machine,
``paired_latency`` each of several models against a reference timed just before it, and
``speedups`` several models against one reference in shared rounds (``call_speedups``: any
runtime's calls, e.g. onnxruntime sessions).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence

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
    times = timed_rounds([compiled[id(m)] for m in models], warmup=warmup,
                         min_rounds=repeats, max_rounds=repeats)
    return [latency_summary(t, int(x.shape[0])) for t in times]


def timed_rounds(calls: Sequence[Callable[[], object]], *, warmup: int, min_rounds: int,
                 max_rounds: int, budget_seconds: float = math.inf) -> list[list[float]]:
    """Seconds of each call, timed in rounds (c0, c1, …, c0, c1, …) after ``warmup`` untimed
    rounds: each call runs one forward to completion (JAX's ending in ``block_until_ready``).
    Rounds go on until ``max_rounds``, or once ``min_rounds`` are done, until
    ``budget_seconds`` of timed calls have passed. One list of seconds per call."""
    if min_rounds < 1 or max_rounds < min_rounds or warmup < 0:
        raise ValueError(f"need 1 <= min_rounds <= max_rounds and warmup >= 0, got "
                         f"{min_rounds}, {max_rounds}, {warmup}")
    for _ in range(warmup):
        for call in calls:
            call()
    times: list[list[float]] = [[] for _ in calls]
    spent = 0.0
    while len(times[0]) < max_rounds and (len(times[0]) < min_rounds
                                          or spent < budget_seconds):
        for call, t in zip(calls, times, strict=True):
            start = time.perf_counter()
            call()
            t.append(time.perf_counter() - start)
            spent += t[-1]
    return times


def latency_summary(times: Sequence[float], batch: int) -> dict:
    """{median, min, max, batch, times} of one call's timed seconds: the median is the figure
    to report, min and max show the spread."""
    return {"median": statistics.median(times), "min": min(times), "max": max(times),
            "batch": batch, "times": list(times)}


def paired_latency(dense: nnx.Module, models: Sequence[nnx.Module], x: jax.Array, *,
                   repeats: int = 20, warmup: int = 2) -> list[dict[str, float]]:
    """Per model: median seconds of ``dense`` and the model on ``x``, the latency reduction
    1 − median over repeats of (model time / the dense time just before it), and its
    ``spread``, the 10th–90th percentile of those per-repeat reductions.

    One interleaved session, dense before every model (d, m1, d, m2, …, d, m1, …): all models
    are measured in the same period of a drifting load, each against its adjacent dense call.
    """
    order = [m for model in models for m in (dense, model)]
    timed = interleaved_latency(order, x, repeats=repeats, warmup=warmup)
    out = []
    for d, m in zip(timed[::2], timed[1::2], strict=True):
        reductions = sorted(1.0 - b / a for a, b in zip(d["times"], m["times"], strict=True))
        out.append({"dense": d["median"], "compressed": m["median"],
                    "reduction": statistics.median(reductions),
                    "spread": [_quantile(reductions, 0.1), _quantile(reductions, 0.9)],
                    "dense_min": d["min"], "compressed_min": m["min"], "batch": d["batch"],
                    "repeats": repeats})
    return out


def speedups(reference: nnx.Module, candidates: Mapping[str, nnx.Module], x: jax.Array, *,
             min_rounds: int = 5, max_rounds: int = 20, budget_seconds: float = 30.0,
             warmup: int = 2) -> dict:
    """Measured speedup of each candidate over ``reference`` on ``x`` (B, H, W, C), one shared
    reference timed in the same rounds (ref, c1, c2, …, ref, c1, …); ``call_speedups`` says
    what the figures are. The eval forwards are jitted and compiled before any timing."""
    x = jnp.asarray(x)
    return call_speedups(_compiled(reference, x),
                         {name: _compiled(m, x) for name, m in candidates.items()},
                         int(x.shape[0]), min_rounds=min_rounds, max_rounds=max_rounds,
                         budget_seconds=budget_seconds, warmup=warmup)


def call_speedups(reference: Callable[[], object], candidates: Mapping[str, Callable[[], object]],
                  batch: int, *, min_rounds: int = 5, max_rounds: int = 20,
                  budget_seconds: float = 30.0, warmup: int = 2) -> dict:
    """Speedups of zero-argument calls that each run one forward to completion (JAX's ending
    in ``block_until_ready``, an onnxruntime session's returning its outputs) over
    ``reference``'s, timed in interleaved rounds (ref, c1, c2, …, ref, c1, …).

    Rounds go on until ``max_rounds`` or until ``budget_seconds`` of timed calls have passed
    (at least ``min_rounds``). A candidate's speedup is the median over rounds of (reference
    time / its time in that round); ``spread`` is the 10th–90th percentile of those ratios, so a
    claim "faster" holds only where ``spread[0] > 1``. Returns {"batch", "rounds",
    "reference_seconds" (median), name: {"seconds", "speedup", "spread"}}.
    """
    names = list(candidates)
    times = timed_rounds([reference] + [candidates[n] for n in names], warmup=warmup,
                         min_rounds=min_rounds, max_rounds=max_rounds,
                         budget_seconds=budget_seconds)
    out = {"batch": batch, "rounds": len(times[0]),
           "reference_seconds": statistics.median(times[0])}
    for name, t in zip(names, times[1:], strict=True):
        ratios = sorted(r / c for r, c in zip(times[0], t, strict=True))
        out[name] = {"seconds": statistics.median(t), "speedup": statistics.median(ratios),
                     "spread": [_quantile(ratios, 0.1), _quantile(ratios, 0.9)]}
    return out


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile of an ascending list."""
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)
