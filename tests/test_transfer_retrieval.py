"""Chunked top-k cosine retrieval against a float64 NumPy brute force."""

import numpy as np
import pytest

from taco_jax.methods import retrieval


def _brute_topk(q, p, k):
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    p = p / np.linalg.norm(p, axis=1, keepdims=True)
    s = q @ p.T
    ids = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, ids, axis=1), ids


@pytest.mark.parametrize("n,chunk", [(1000, 128), (1000, 1000), (997, 64), (50, 4096)])
def test_topk_matches_brute_force(n, chunk):
    rng = np.random.default_rng(n)
    q, p = rng.normal(size=(13, 24)), rng.normal(size=(n, 24)) * rng.uniform(0.1, 5, (n, 1))
    k = min(17, n)
    scores, ids = retrieval.topk_cosine(q.astype(np.float32), p.astype(np.float32), k,
                                        chunk=chunk)
    want_s, want_i = _brute_topk(np.float64(q), np.float64(p), k)
    np.testing.assert_array_equal(ids, want_i)  # distinct random scores: no ties
    np.testing.assert_allclose(scores, want_s, atol=1e-5)
    assert ids.max() < n  # padding rows are never returned


def test_balanced_selection_is_rank_major_and_distinct():
    nb = np.array([[5, 1, 2], [5, 3, 4], [6, 1, 7]])
    np.testing.assert_array_equal(retrieval.balanced_selection(nb, 6), [5, 6, 1, 3, 2, 4])
    with pytest.raises(ValueError, match="only 7"):
        retrieval.balanced_selection(nb, 8)


def test_retrieve_widens_k_until_enough_distinct_images():
    rng = np.random.default_rng(0)
    pool = rng.normal(size=(300, 8))
    queries = pool[:3] + 1e-3  # near-duplicate queries share their neighbours
    queries = np.concatenate([queries, queries])
    ids = retrieval.retrieve(queries, pool, 40, chunk=64)
    assert len(ids) == 40 == len(set(ids.tolist()))
    _, want = _brute_topk(queries, pool, 300)
    assert set(want[:, 0]) <= set(ids.tolist())  # every query's best neighbour is in


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="share D"):
        retrieval.topk_cosine(np.ones((2, 3)), np.ones((5, 4)), 1)
    with pytest.raises(ValueError, match="k must be in"):
        retrieval.topk_cosine(np.ones((2, 3)), np.ones((5, 3)), 6)
    with pytest.raises(ValueError, match="size must be in"):
        retrieval.retrieve(np.ones((2, 3)), np.ones((5, 3)), 0)


def test_nearest_pool_leaves_out_query_copies_and_matches_brute_force():
    from flax import nnx

    class Flatten(nnx.Module):
        def forward_features(self, x):
            return x.reshape(x.shape[0], -1)

    rng = np.random.default_rng(1)
    queries = rng.integers(0, 256, (3, 4, 4, 1), dtype=np.uint8)
    pool = rng.integers(0, 256, (40, 4, 4, 1), dtype=np.uint8)
    pool[[7, 20]] = queries[[0, 2]]  # the labelled images are in the pool too
    def as_float(x):
        return x.astype(np.float32) - 127.5

    ids = retrieval.nearest_pool(Flatten(), queries, pool, 6, as_float)
    others = np.setdiff1d(np.arange(40), [7, 20])
    _, ranked = _brute_topk(np.float64(as_float(queries).reshape(3, -1)),
                            np.float64(as_float(pool[others]).reshape(38, -1)), 38)
    order = others[ranked.T.ravel()]  # rank-major, then the first 6 distinct
    _, first = np.unique(order, return_index=True)
    np.testing.assert_array_equal(ids, np.sort(order[np.sort(first)][:6]))
    np.testing.assert_array_equal(retrieval.nearest_pool(Flatten(), queries, pool, 50,
                                                         as_float), others)
