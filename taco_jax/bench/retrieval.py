"""Retrieval throughput: queries/s of ``retrieval.topk_cosine`` over a large embedding pool.

  python -m taco_jax.bench.retrieval --pool=100000 --dim=768 --queries=1000 --k=50

Random unit embeddings (throughput does not depend on their values). The jitted scan is compiled
and run once before timing; every timed call ends when its results are on the host (NumPy), which
blocks on the device. The median of ``--repeats`` calls is reported, with a breakdown: the same
chunked scan doing only the (Q, chunk) matmuls (a sum stands in for the top-k merge), and the
pool normalisation alone, so what dominates the call can be read off.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from taco_jax.methods import retrieval

_POOL = flags.DEFINE_integer("pool", 100_000, "Pool size (embeddings searched).", lower_bound=1)
_DIM = flags.DEFINE_integer("dim", 768, "Embedding width.", lower_bound=1)
_QUERIES = flags.DEFINE_integer("queries", 1000, "Queries per call.", lower_bound=1)
_K = flags.DEFINE_integer("k", 50, "Neighbours per query.", lower_bound=1)
_CHUNK = flags.DEFINE_integer("chunk", 8192, "Pool rows per scan step.", lower_bound=1)
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls.", lower_bound=1)


def _median_seconds(call, repeats: int) -> float:
    jax.block_until_ready(call())  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(call())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _matmul_only(queries: jax.Array, pool: jax.Array, chunk: int) -> jax.Array:
    """The retrieval scan's matmuls alone: (Q, chunk) similarities per pool chunk, summed."""
    pad = (-pool.shape[0]) % chunk
    blocks = jnp.pad(pool, ((0, pad), (0, 0))).reshape(-1, chunk, pool.shape[-1])

    def step(acc, block):
        return acc + jnp.dot(queries, block.T, precision=jax.lax.Precision.HIGHEST), None

    return jax.lax.scan(step, jnp.zeros((queries.shape[0], chunk), jnp.float32), blocks)[0]


def main(argv: list[str]) -> None:
    del argv
    rng = np.random.default_rng(0)
    pool = rng.normal(size=(_POOL.value, _DIM.value)).astype(np.float32)
    queries = rng.normal(size=(_QUERIES.value, _DIM.value)).astype(np.float32)
    pool_dev, q_dev = jax.device_put(pool), jax.device_put(queries)
    chunk = min(_CHUNK.value, _POOL.value)
    sec = _median_seconds(
        lambda: retrieval.topk_cosine(q_dev, pool_dev, _K.value, chunk=chunk), _REPEATS.value)
    matmul = jax.jit(_matmul_only, static_argnames="chunk")
    sec_matmul = _median_seconds(lambda: matmul(q_dev, pool_dev, chunk=chunk), _REPEATS.value)
    norm = jax.jit(retrieval.normalize)
    sec_norm = _median_seconds(lambda: norm(pool_dev), _REPEATS.value)
    dev = jax.devices()[0]
    print(f"device {dev.device_kind} ({dev.platform}), jax {jax.__version__}")
    print(f"pool {_POOL.value} x {_DIM.value}, {_QUERIES.value} queries, top-{_K.value}, chunk "
          f"{_CHUNK.value}: median {sec:.3f} s per call = {_QUERIES.value / sec:,.0f} queries/s "
          f"({_QUERIES.value * _POOL.value / sec / 1e9:.2f} G similarities/s)")
    print(f"  breakdown: matmuls alone {sec_matmul:.3f} s ({sec_matmul / sec:.0%} of the call), "
          f"pool normalisation alone {sec_norm:.3f} s ({sec_norm / sec:.0%}); the rest is the "
          "top-k merge, padding and transfers")


if __name__ == "__main__":
    app.run(main)
