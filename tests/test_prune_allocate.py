"""Global sparsity allocation: exact against brute force, budget met, used by prune_model; the
output-error curves against a float64 numpy forward."""

import itertools

import jax
import numpy as np
import pytest
from flax import nnx
from test_prune_fixtures import TinyCNN, TinyViT, image_batches, randomize_batchnorm

from taco_jax.models.paths import get_layer
from taco_jax.prune.allocate import allocate_sparsity, error_curves, threshold_levels
from taco_jax.prune.hessian import collect_hessians
from taco_jax.prune.patterns import Unstructured
from taco_jax.prune.sequential import PruneConfig, prune_model
from taco_jax.prune.solver import prune_layer
from taco_jax.train import batchnorm


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


def test_a_budget_only_the_top_level_meets_gives_the_top_level():
    """Every layer at the grid's top level costs exactly the budget (the speed search's deepest
    candidate, allocated again by ``prune_model``): rounded up, the three costs add up to 4,001
    units of 4,000, which once made this "no allocation meets the budget". The budget is kept
    exactly; one level lower anywhere is over it."""
    grid = (0.0, 0.5, 0.95)
    sizes = {"a": 1.0, "b": 2.0, "c": 3.3}
    costs = {n: [w * (1 - s) for s in grid] for n, w in sizes.items()}
    errors = {n: [0.0, 1.0, 5.0] for n in sizes}
    budget = (1 - 0.95) * sum(sizes.values())
    assert sum(np.ceil(c[2] / (budget / 4000)) for c in costs.values()) > 4000
    assert allocate_sparsity(errors, costs, grid, budget) == {n: 0.95 for n in sizes}
    with pytest.raises(ValueError, match="no allocation meets the budget"):
        allocate_sparsity(errors, costs, grid, budget * 0.999)


def test_infeasible_budget_is_a_clear_error():
    with pytest.raises(ValueError, match="no allocation meets the budget"):
        allocate_sparsity({"a": [0, 1]}, {"a": [10, 5]}, (0.0, 0.5), budget=1)


@pytest.mark.parametrize("allocation", ["global", "output"])
def test_global_allocation_in_prune_model_meets_the_parameter_budget(allocation):
    vit = TinyViT(nnx.Rngs(0))
    cfg = PruneConfig(sparsity=0.7, allocation=allocation, blocksize=32,
                      allocation_grid=(0.0, 0.5, 0.7, 0.8, 0.9))
    res = prune_model(vit, image_batches(1), cfg)
    sizes = {s.name: np.prod(s.shape) for s in res.stats}
    zeros = sum(np.sum(~res.masks[n]) for n in sizes)
    assert zeros >= 0.7 * sum(sizes.values()) - len(sizes)  # floor() per layer
    assert len(set(res.sparsities.values())) > 1  # not uniform
    for n, s in res.sparsities.items():
        k = np.asarray(get_layer(vit, n).kernel.get_value())
        assert np.mean(k == 0) == pytest.approx(s, abs=0.01)


def _kernels(model, names) -> dict[str, np.ndarray]:
    return {n: np.array(get_layer(model, n).kernel.get_value(), np.float64) for n in names}


def test_global_magnitude_pruning_keeps_the_weights_above_one_threshold():
    """allocation="magnitude" + magnitude pruning is classical global magnitude pruning: every
    weight above one |w| threshold over all layers is kept, every one below it is zeroed,
    against a numpy quantile over the concatenated kernels; no calibration data involved."""
    vit = TinyViT(nnx.Rngs(0))
    names = ["blocks.0.attn.qkv", "blocks.0.mlp.fc1", "blocks.1.mlp.fc2", "head"]
    for n, scale in zip(names, (0.6, 1.0, 1.6, 0.8), strict=True):  # unequal layer scales
        layer = get_layer(vit, n)
        layer.kernel.set_value(layer.kernel.get_value() * scale)
    before = _kernels(vit, names)
    flat = np.sort(np.concatenate([np.abs(k).ravel() for k in before.values()]))
    k = int(0.8 * len(flat))
    threshold = (flat[k - 1] + flat[k]) / 2

    levels = threshold_levels(vit, names, "unstructured", 0.8)
    for n in names:
        assert levels[n] == pytest.approx(np.mean(np.abs(before[n]) < threshold), abs=1e-9)
    assert len({round(v, 3) for v in levels.values()}) == len(names)  # not uniform

    cfg = PruneConfig(sparsity=0.8, allocation="magnitude", method="magnitude", blocksize=32,
                      prune_head=True)
    prune_model(vit, image_batches(1), cfg, layers=names)
    for n, after in _kernels(vit, names).items():
        np.testing.assert_array_equal(after != 0, np.abs(before[n]) > threshold)
        np.testing.assert_array_equal(after[after != 0], before[n][after != 0])


def test_global_magnitude_levels_rank_block_tiles_by_their_summed_squares():
    vit = TinyViT(nnx.Rngs(1))
    names = ["blocks.0.mlp.fc1", "blocks.0.mlp.fc2"]
    get_layer(vit, names[1]).kernel.set_value(get_layer(vit, names[1]).kernel.get_value() * 2.2)
    tiles = {}
    for n, kern in _kernels(vit, names).items():  # kernel (in, out): W = kernel.T (out, in)
        W = kern.T
        tiles[n] = (W**2).reshape(W.shape[0] // 8, 8, W.shape[1] // 8, 8).sum((1, 3)).ravel()
    flat = np.sort(np.concatenate(list(tiles.values())))
    k = int(0.6 * len(flat))
    threshold = (flat[k - 1] + flat[k]) / 2
    levels = threshold_levels(vit, names, "block8x8", 0.6)
    for n in names:
        assert levels[n] == pytest.approx(np.mean(tiles[n] < threshold), abs=1e-9)
    assert 1 - 1 / len(tiles[names[0]]) > levels[names[0]] > 0.6 > levels[names[1]] > 0


def test_global_magnitude_levels_refuse_structured_patterns():
    with pytest.raises(ValueError, match="structured"):
        PruneConfig(pattern="structured", allocation="magnitude")


class TwoLayerMlp(nnx.Module):
    """x (N, 8) -> fc1 (16) -> relu -> fc2 (5 logits); small enough for a float64 numpy twin."""

    def __init__(self, rngs):
        self.fc1 = nnx.Linear(8, 16, rngs=rngs)
        self.fc2 = nnx.Linear(16, 5, rngs=rngs)

    def __call__(self, x):
        return self.fc2(nnx.relu(self.fc1(x)))


def _numpy_logits(kernels, biases, x):
    h = np.maximum(x @ kernels["fc1"] + biases["fc1"], 0.0)
    return h @ kernels["fc2"] + biases["fc2"]


def _numpy_kl(p_logits, q_logits):
    def log_softmax(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    p, q = log_softmax(p_logits), log_softmax(q_logits)
    return np.mean(np.sum(np.exp(p) * (p - q), -1))


def test_output_error_curves_match_a_float64_forward_of_each_layer_pruned_alone():
    model = TwoLayerMlp(nnx.Rngs(0))
    rng = np.random.default_rng(1)
    batches = [rng.normal(size=(n, 8)).astype(np.float32) for n in (24, 9)]  # unequal sizes
    grid = (0.0, 0.5, 0.75)
    names = ["fc1", "fc2"]
    before = {n: np.array(get_layer(model, n).kernel.get_value()) for n in names}
    got = error_curves(model, batches, names, Unstructured(), grid, measure="output",
                       blocksize=8)
    for n in names:  # the model is given back unchanged
        np.testing.assert_array_equal(np.asarray(get_layer(model, n).kernel.get_value()),
                                      before[n])

    x = np.concatenate(batches).astype(np.float64)
    kernels = {n: before[n].astype(np.float64) for n in names}
    biases = {n: np.asarray(get_layer(model, n).bias.get_value(), np.float64) for n in names}
    dense = _numpy_logits(kernels, biases, x)
    hessians = collect_hessians(model, batches, names)
    for n in names:
        want = []
        for s in grid:
            Wp, _, _ = prune_layer(before[n].T, hessians[n], "unstructured", s, blocksize=8)
            pruned = dict(kernels, **{n: np.asarray(Wp, np.float64).T})
            want.append(_numpy_kl(dense, _numpy_logits(pruned, biases, x)))
        assert want[0] == pytest.approx(0.0, abs=1e-9) and want[-1] > 1e-4  # a real signal
        np.testing.assert_allclose(got[n], want, rtol=2e-3, atol=1e-7)


def test_unknown_error_measure_is_named():
    with pytest.raises(ValueError, match="'logits'"):
        error_curves(TwoLayerMlp(nnx.Rngs(0)), [np.zeros((2, 8), np.float32)], ["fc1"],
                     Unstructured(), (0.0,), measure="logits")
    with pytest.raises(ValueError, match="'outputs'"):
        PruneConfig(allocation="outputs")


def test_error_curves_without_batches_is_a_clear_error():
    with pytest.raises(ValueError, match="at least one calibration batch"):
        error_curves(TwoLayerMlp(nnx.Rngs(0)), [], ["fc1"], Unstructured(), (0.0,))


def test_output_error_curves_leave_a_batchnorm_model_unchanged():
    """The output measure re-estimates BatchNorm statistics after each trial prune (as the
    pipeline does after pruning); weights and statistics are given back as they were."""
    model = TinyCNN(nnx.Rngs(0))
    randomize_batchnorm(model)
    before = jax.tree.map(np.array, nnx.state(model, (nnx.Param, nnx.BatchStat)))
    names = ["block.conv1", "block.conv2"]
    batches = image_batches(2)
    curves = error_curves(model, batches, names, Unstructured(), (0.0, 0.9),
                          measure="output", blocksize=32)
    after = jax.tree.map(np.array, nnx.state(model, (nnx.Param, nnx.BatchStat)))
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True):
        np.testing.assert_array_equal(a, b)

    # At sparsity 0 only the re-estimation acts: the KL of the model with its statistics
    # re-estimated on the calibration images, against the model as given.
    x = np.concatenate(batches)
    model.eval()
    dense = np.asarray(model(x), np.float64)
    refit = nnx.clone(model)
    batchnorm.reestimate(refit, x, lambda v: v)
    want = _numpy_kl(dense, np.asarray(refit(x), np.float64))
    assert want > 1e-3  # the randomized statistics really move
    for n in names:
        assert curves[n][0] == pytest.approx(want, rel=2e-3)
        assert curves[n][1] != pytest.approx(want, rel=2e-3)  # the 90% prune did act
