"""Global sparsity allocation: exact against brute force, budget met, used by prune_model."""

import itertools

import numpy as np
import pytest
from flax import nnx
from test_prune_fixtures import TinyViT, image_batches

from taco_jax.models.paths import get_layer
from taco_jax.prune.allocate import allocate_sparsity
from taco_jax.prune.sequential import PruneConfig, prune_model


def test_allocation_matches_brute_force():
    rng = np.random.default_rng(0)
    grid = (0.0, 0.5, 0.7, 0.9)
    for _ in range(5):
        names = [f"l{i}" for i in range(4)]
        sizes = dict(zip(names, rng.integers(100, 1000, 4), strict=True))
        errors = {n: np.sort(rng.uniform(0, 1, 4)) * rng.uniform(0.1, 3) for n in names}
        costs = {n: [sizes[n] * (1 - s) for s in grid] for n in names}
        budget = 0.3 * sum(sizes.values())
        got = allocate_sparsity(errors, costs, grid, budget)
        best = min(
            (sum(errors[n][i] for n, i in zip(names, c, strict=True)), c)
            for c in itertools.product(range(4), repeat=4)
            if sum(costs[n][i] for n, i in zip(names, c, strict=True)) <= budget)
        got_err = sum(errors[n][grid.index(got[n])] for n in names)
        assert sum(costs[n][grid.index(got[n])] for n in names) <= budget
        assert got_err <= best[0] * 1.02 + 1e-9  # optimal up to the budget discretisation


def test_infeasible_budget_is_a_clear_error():
    with pytest.raises(ValueError, match="no allocation meets the budget"):
        allocate_sparsity({"a": [0, 1]}, {"a": [10, 5]}, (0.0, 0.5), budget=1)


def test_global_allocation_in_prune_model_meets_the_parameter_budget():
    vit = TinyViT(nnx.Rngs(0))
    cfg = PruneConfig(sparsity=0.7, allocation="global", blocksize=32,
                      allocation_grid=(0.0, 0.5, 0.7, 0.8, 0.9))
    res = prune_model(vit, image_batches(1), cfg)
    sizes = {s.name: np.prod(s.shape) for s in res.stats}
    zeros = sum(np.sum(~res.masks[n]) for n in sizes)
    assert zeros >= 0.7 * sum(sizes.values()) - len(sizes)  # floor() per layer
    assert len(set(res.sparsities.values())) > 1  # not uniform
    for n, s in res.sparsities.items():
        k = np.asarray(get_layer(vit, n).kernel.get_value())
        assert np.mean(k == 0) == pytest.approx(s, abs=0.01)
