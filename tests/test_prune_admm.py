"""The ADMM mask selection (``prune.admm``, ``method="admm"``): against a float64 NumPy
re-implementation of the same iteration, its masks valid for every pattern, and its error below
SparseGPT's + the exact re-solve where that one falls short (correlated inputs, high sparsity)."""

from __future__ import annotations

import numpy as np
import pytest
from test_prune_refit import numpy_refit

from taco_jax.bench.refit import correlated_layer, rel_error
from taco_jax.prune import admm, refit
from taco_jax.prune.solver import choose_method, prune_layer


def numpy_admm(W, H, total, iterations=admm.ITERATIONS, rho=admm.RHO, percdamp=0.01):
    """The module docstring's iteration in float64, unstructured over the whole layer: the
    pruned mask after ``iterations`` steps (ramp to ``total`` pruned weights)."""
    H = np.float64(H) + percdamp * np.mean(np.diag(H)) * np.eye(len(H))
    n = np.sqrt(np.diag(H))
    Hn = H / np.outer(n, n)
    inv = np.linalg.inv(Hn + rho * np.eye(len(H)))
    W0 = np.float64(W) * n
    B = W0 @ Hn
    Z, U = W0.copy(), np.zeros_like(W0)
    ramp = max(1, int(admm.RAMP * iterations))
    pruned = np.zeros(W.shape, bool)
    for i in range(iterations):
        Wn = (B + rho * (Z - U)) @ inv
        t = min((i + 1) / ramp, 1.0)
        k = int(np.floor(total * (1 - (1 - t) ** 3) + 1e-6))
        V = Wn + U
        pruned = np.zeros(W.size, bool)
        pruned[np.argsort(np.abs(V).ravel(), kind="stable")[:k]] = True
        pruned = pruned.reshape(W.shape)
        Z = np.where(pruned, 0.0, V)
        U = U + Wn - Z
    return pruned


def test_admm_matches_a_float64_reference():
    W, H = correlated_layer(24, 64, seed=3)
    total = int(0.8 * W.size)
    W1, keep, stats = prune_layer(W, H, "unstructured", 0.8, method="admm")
    ref = ~numpy_admm(W, H, total)
    keep = np.asarray(keep)
    assert keep.sum() == ref.sum() == W.size - total
    assert np.mean(keep == ref) > 0.98, np.mean(keep == ref)
    ours = rel_error(W, np.asarray(refit.refit(W, H, keep, W1)), H)
    theirs = rel_error(W, numpy_refit(W, H, ref), H)
    assert abs(ours - theirs) <= 0.02 * theirs, (ours, theirs)
    # ADMM's own weights are close to the least squares on its mask already
    assert rel_error(W, np.asarray(W1), H) <= 1.05 * ours
    assert float(stats.rel_error) == pytest.approx(rel_error(W, np.asarray(W1), H), rel=1e-3)


@pytest.mark.parametrize("pattern,sparsity,factor", [
    ("unstructured", 0.9, 0.6), ("unstructured", 0.75, 0.7), ("2:4", 0.0, 1.25),
    ("block8x8", 0.75, 1.1)])
def test_admm_beats_sparsegpt_with_the_re_solve_unstructured(pattern, sparsity, factor):
    """On a correlated (AR(1)) 64x256 layer, re-solved errors: unstructured ADMM below
    ``factor`` times SparseGPT's (measured 0.44-0.58x here, 0.65x on the reference's 768x768
    layer at 90%); on N:M and tiles within ``factor`` of it (measured 1.0-1.1x: "auto" keeps
    SparseGPT there). The pattern's counts exact, its shape kept."""
    W, H = correlated_layer(64, 256, seed=5)
    errors, keeps = {}, {}
    for method in ("admm", "sparsegpt"):
        W1, keep, _ = prune_layer(W, H, pattern, sparsity, method=method)
        keeps[method] = keep = np.asarray(keep)
        V = np.asarray(refit.refit(W, H, keep, W1))
        assert np.all(V[~keep] == 0)
        errors[method] = rel_error(W, V, H)
    assert errors["admm"] < factor * errors["sparsegpt"], errors
    a, b = keeps["admm"], keeps["sparsegpt"]
    assert a.sum() == b.sum()
    if pattern == "2:4":
        assert np.all(a.reshape(64, -1, 4).sum(-1) == 2)
    if pattern.startswith("block"):
        tiles = a.reshape(8, 8, 32, 8).transpose(0, 2, 1, 3).reshape(8, 32, 64)
        assert np.all(tiles.all(-1) | ~tiles.any(-1))  # whole tiles kept or pruned


def test_auto_picks_admm_for_wide_unstructured_layers_and_group_obs_for_structured():
    from taco_jax.prune.patterns import Block, Structured, Unstructured

    assert choose_method("auto", Unstructured(), 512, 4608) == "admm"
    assert choose_method("auto", Block(16, 16), 768, 768) == "sparsegpt"
    assert choose_method("auto", Structured(1), 512, 4608) == "sparsegpt"
    assert choose_method("auto", Structured(1), 64, 64) == "obc"
    W, H = correlated_layer(16, 64, seed=2)
    s1 = prune_layer(W, H, "structured4", 0.5, method="admm")
    s2 = prune_layer(W, H, "structured4", 0.5, method="sparsegpt")
    np.testing.assert_array_equal(np.asarray(s1[1]), np.asarray(s2[1]))


def test_admm_refuses_non_finite_input():
    W, H = correlated_layer(8, 16, seed=1)
    H[3, 3] = np.nan
    with pytest.raises(ValueError, match="finite"):
        prune_layer(W, H, "unstructured", 0.5, method="admm")
