"""Nearest-neighbour retrieval of transfer images from a pool by the teacher's embeddings.

The task's labelled images are the queries; a large unlabelled pool is searched by cosine
similarity of L2-normalised teacher embeddings. ``topk_cosine`` scans the pool in fixed-size
chunks under ``lax.scan``, keeping a running top-k per query, so memory is O(Q·(k + chunk)) and
the full (Q, N) similarity matrix is never built. ``balanced_selection`` turns the per-query
neighbour lists into one deduplicated id set of an exact size, taking every query's rank-1
neighbour before any rank-2 one (no query dominates the set).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from taco_jax.train import fit


def normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """Rows scaled to unit L2 norm (zero rows stay zero). (N, D) → (N, D)."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def embed(model: nnx.Module, images: np.ndarray, preprocess: Callable,
          batch_size: int = 256) -> np.ndarray:
    """Unit-norm ``model.forward_features`` embeddings (N, D) float32 of uint8 images (N,H,W,C)."""
    return fit.predict(model, images, preprocess, batch_size,
                       output=lambda m, x: normalize(m.forward_features(x)))


@partial(jax.jit, static_argnames=("k", "chunk"))
def _topk_scan(queries: jax.Array, pool: jax.Array, n_valid: jax.Array, *, k: int, chunk: int):
    q = queries.shape[0]
    blocks = pool.reshape(-1, chunk, pool.shape[-1])

    def step(carry, inp):
        best_s, best_i = carry
        block, offset = inp
        s = jnp.dot(queries, block.T, precision=jax.lax.Precision.HIGHEST)  # (Q, chunk)
        ids = offset + jnp.arange(chunk)
        s = jnp.where(ids[None, :] < n_valid, s, -jnp.inf)  # padding rows never win
        all_s = jnp.concatenate([best_s, s], axis=1)
        all_i = jnp.concatenate([best_i, jnp.broadcast_to(ids, (q, chunk))], axis=1)
        top_s, pos = jax.lax.top_k(all_s, k)
        return (top_s, jnp.take_along_axis(all_i, pos, axis=1)), None

    init = (jnp.full((q, k), -jnp.inf, jnp.float32), jnp.full((q, k), -1, jnp.int32))
    offsets = jnp.arange(blocks.shape[0], dtype=jnp.int32) * chunk
    (scores, ids), _ = jax.lax.scan(step, init, (blocks, offsets))
    return scores, ids


def topk_cosine(queries: np.ndarray | jax.Array, pool: np.ndarray | jax.Array, k: int, *,
                chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """The k most cosine-similar pool rows of every query: (scores (Q, k), ids (Q, k)), best first.

    ``queries`` (Q, D) and ``pool`` (N, D) need not be normalised (they are here). The pool is
    scanned ``chunk`` rows at a time; peak memory is Q·(k + chunk) scores, never Q·N.
    """
    queries, pool = jnp.asarray(queries, jnp.float32), jnp.asarray(pool, jnp.float32)
    if queries.ndim != 2 or pool.ndim != 2 or queries.shape[1] != pool.shape[1]:
        raise ValueError(f"queries (Q, D) and pool (N, D) must share D, got {queries.shape} and "
                         f"{pool.shape}")
    n = pool.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, pool size {n}], got {k}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    chunk = min(chunk, n)
    pad = (-n) % chunk
    pool = jnp.pad(normalize(pool), ((0, pad), (0, 0)))
    scores, ids = _topk_scan(normalize(queries), pool, jnp.int32(n), k=k, chunk=chunk)
    return np.asarray(scores), np.asarray(ids)


def balanced_selection(neighbours: np.ndarray, size: int) -> np.ndarray:
    """``size`` distinct pool ids from per-query ranked lists ``neighbours`` (Q, k): all rank-1
    neighbours (query order) first, then all rank-2, ... skipping ids already taken."""
    neighbours = np.asarray(neighbours)
    unique = len(np.unique(neighbours))
    if size > unique:
        raise ValueError(f"asked for {size} distinct images but the {neighbours.shape[0]} "
                         f"queries' top-{neighbours.shape[1]} lists hold only {unique}; "
                         "retrieve a larger k")
    order = neighbours.T.ravel()  # rank-major: every query's rank r before any rank r + 1
    _, first = np.unique(order, return_index=True)
    return order[np.sort(first)][:size]


def drop_query_copies(pool: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Ids of pool images that are not byte-identical to a query (the labelled images)."""
    seen = {q.tobytes() for q in queries}
    return np.asarray([i for i, p in enumerate(pool) if p.tobytes() not in seen], np.int64)


def nearest_pool(model: nnx.Module, queries: np.ndarray, pool: np.ndarray, size: int,
                 preprocess: Callable, candidates: np.ndarray | None = None) -> np.ndarray:
    """Sorted ids of the ``size`` pool images (M,H,W,C) nearest to the query images in
    ``model``'s embedding (``retrieve``), among ``candidates`` (default: the pool images that
    are not copies of a query, ``drop_query_copies``); all of them when fewer remain."""
    ids = drop_query_copies(pool, queries) if candidates is None else candidates
    if size >= len(ids):
        return ids
    chosen = retrieve(embed(model, queries, preprocess), embed(model, pool[ids], preprocess),
                      size)
    return np.sort(ids[chosen])


def retrieve(query_emb: np.ndarray, pool_emb: np.ndarray, size: int, *,
             chunk: int = 8192) -> np.ndarray:
    """``size`` distinct pool ids nearest to the queries, balanced across queries (see module)."""
    q = len(query_emb)
    if not 1 <= size <= len(pool_emb):
        raise ValueError(f"size must be in [1, pool size {len(pool_emb)}], got {size}")
    k = min(len(pool_emb), -(-size // q))
    while True:
        _, ids = topk_cosine(query_emb, pool_emb, k, chunk=chunk)
        if len(np.unique(ids)) >= size or k == len(pool_emb):
            return balanced_selection(ids, size)
        k = min(len(pool_emb), 2 * k)  # neighbour lists overlap: widen until enough distinct
