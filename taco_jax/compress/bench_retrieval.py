"""Retrieval throughput: queries/s of ``retrieval.topk_cosine`` over a large embedding pool.

  python -m taco_jax.compress.bench_retrieval --pool=100000 --dim=768 --queries=1000 --k=50

Random unit embeddings (throughput does not depend on their values). The jitted scan is compiled
and run once before timing; every timed call ends when its results are on the host (NumPy), which
blocks on the device. The median of ``--repeats`` calls is reported.
"""

from __future__ import annotations

import statistics
import time

import jax
import numpy as np
from absl import app, flags

from taco_jax.compress import retrieval

_POOL = flags.DEFINE_integer("pool", 100_000, "Pool size (embeddings searched).", lower_bound=1)
_DIM = flags.DEFINE_integer("dim", 768, "Embedding width.", lower_bound=1)
_QUERIES = flags.DEFINE_integer("queries", 1000, "Queries per call.", lower_bound=1)
_K = flags.DEFINE_integer("k", 50, "Neighbours per query.", lower_bound=1)
_CHUNK = flags.DEFINE_integer("chunk", 8192, "Pool rows per scan step.", lower_bound=1)
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls.", lower_bound=1)


def main(argv: list[str]) -> None:
    del argv
    rng = np.random.default_rng(0)
    pool = rng.normal(size=(_POOL.value, _DIM.value)).astype(np.float32)
    queries = rng.normal(size=(_QUERIES.value, _DIM.value)).astype(np.float32)
    pool_dev, q_dev = jax.device_put(pool), jax.device_put(queries)
    call = lambda: retrieval.topk_cosine(q_dev, pool_dev, _K.value, chunk=_CHUNK.value)
    call()  # compile
    times = []
    for _ in range(_REPEATS.value):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    sec = statistics.median(times)
    dev = jax.devices()[0]
    print(f"device {dev.device_kind} ({dev.platform}), jax {jax.__version__}")
    print(f"pool {_POOL.value} x {_DIM.value}, {_QUERIES.value} queries, top-{_K.value}, chunk "
          f"{_CHUNK.value}: median {sec:.3f} s per call = {_QUERIES.value / sec:,.0f} queries/s "
          f"({_QUERIES.value * _POOL.value / sec / 1e9:.2f} G similarities/s)")


if __name__ == "__main__":
    app.run(main)
