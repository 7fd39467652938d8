"""Measured forward latency of a model on the current default device (compilation excluded).

One timer for every report (TACO, DC-ViT, transfer, the model benchmark): the eval forward is
jitted and compiled ahead of time, run ``warmup`` times, then ``repeats`` timed calls each ending
in ``block_until_ready``. The median is the figure to report; min and max show the spread.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
from flax import nnx


def model_latency(model: nnx.Module, x: jax.Array, *, repeats: int = 10,
                  warmup: int = 2) -> dict[str, float]:
    """Seconds per eval forward of ``model`` on ``x`` (B, H, W, C): {median, min, max, batch}.

    The model is put in eval mode (BatchNorm running stats, no dropout) and left so.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats}, {warmup}")
    model.eval()
    graphdef, state = nnx.split(model)
    x = jnp.asarray(x)
    forward = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x)).lower(state, x).compile()
    for _ in range(warmup):
        forward(state, x).block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        forward(state, x).block_until_ready()
        times.append(time.perf_counter() - start)
    return {"median": statistics.median(times), "min": min(times), "max": max(times),
            "batch": int(x.shape[0])}
