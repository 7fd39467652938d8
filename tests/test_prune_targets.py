"""Dense targets: the least-squares correction, the paired Hessian/cross-covariance, the wiring."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_prune_fixtures import TinyCNN, TinyViT, image_batches, randomize_batchnorm

from taco_jax.models.paths import get_layer, set_layer
from taco_jax.prune import sequential
from taco_jax.prune.hessian import Probe, collect_paired
from taco_jax.prune.layout import layer_inputs, layer_matrix
from taco_jax.prune.segments import forward_groups
from taco_jax.prune.sequential import PruneConfig, prune_model
from taco_jax.prune.solver import prune_layer
from taco_jax.prune.targets import dense_target


def _ridge_lstsq(W, W_ref, X, X_ref, lam):
    """argmin_V (2/n)‖W_ref X_ref − V X‖² + λ‖V − W‖², as one stacked least-squares problem."""
    n, k = X.shape[1], X.shape[0]
    A = np.concatenate([np.sqrt(2 / n) * X.T, np.sqrt(lam) * np.eye(k)])
    B = np.concatenate([np.sqrt(2 / n) * (W_ref @ X_ref).T, np.sqrt(lam) * W.T])
    return np.linalg.lstsq(A, B, rcond=None)[0].T


def test_dense_target_is_the_ridge_least_squares_solution():
    rng = np.random.default_rng(0)
    k, k_ref, d, n = 12, 9, 5, 40
    X_ref = rng.normal(size=(k_ref, n))
    X = rng.normal(size=(k, k_ref)) @ X_ref * 0.5 + 0.3 * rng.normal(size=(k, n))
    X[3] = 0.0  # a dead input
    W, W_ref = rng.normal(size=(d, k)), rng.normal(size=(d, k_ref))
    H, C = 2 * X @ X.T / n, 2 * X_ref @ X.T / n
    got = np.asarray(dense_target(jnp.asarray(W[None], jnp.float32),
                                  jnp.asarray(W_ref[None], jnp.float32),
                                  jnp.asarray(H, jnp.float32), jnp.asarray(C, jnp.float32), 0.05))
    Hd = H.copy()
    Hd[3, 3] = 1.0  # the solver's convention for dead inputs, and so the damping's mean
    want = _ridge_lstsq(W, W_ref, X, X_ref, 0.05 * np.mean(np.diag(Hd)))
    live = np.arange(k) != 3
    np.testing.assert_allclose(got[0][:, live], want[:, live], rtol=1e-4, atol=1e-4)
    # its own inputs and weights as the reference: the layer's weights, unchanged
    same = dense_target(jnp.asarray(W[None], jnp.float32), jnp.asarray(W[None], jnp.float32),
                        jnp.asarray(H, jnp.float32), jnp.asarray(H, jnp.float32), 0.05)
    np.testing.assert_allclose(np.asarray(same[0])[:, live], W[:, live], atol=1e-4)


def _inputs(model, name, xs):
    """float64 input columns (n, G, k) of ``name`` over ``xs``, captured eagerly."""
    layer = get_layer(model, name)
    got = []
    set_layer(model, name, Probe(layer, lambda v: got.append(np.float64(layer_inputs(layer, v)))))
    try:
        for x in xs:
            model(jnp.asarray(x))
    finally:
        set_layer(model, name, layer)
    return np.concatenate(got)


def test_collect_paired_matches_explicit_inputs_for_a_grouped_conv():
    xs = image_batches(2)
    reference = randomize_batchnorm(TinyCNN(nnx.Rngs(0)))
    model = nnx.clone(reference)
    k = model.block.conv2.kernel
    k.set_value(k.get_value() * (np.random.default_rng(1).random(k.get_value().shape) > 0.5))
    model.eval()
    reference.eval()
    H, C = collect_paired(model, xs, reference, xs, "grouped")
    X, X_ref = _inputs(model, "grouped", xs), _inputs(reference, "grouped", xs)
    n = X.shape[0]
    assert H.shape == C.shape == (2, 72, 72)
    np.testing.assert_allclose(np.asarray(H), 2 * np.einsum("ngi,ngj->gij", X, X) / n,
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(C), 2 * np.einsum("ngi,ngj->gij", X_ref, X) / n,
                               rtol=1e-4, atol=1e-5)
    assert not np.allclose(np.asarray(C), np.asarray(H), atol=1e-3)  # the inputs do differ


def test_prune_model_with_dense_targets_equals_a_hand_written_loop():
    """Each layer: paired sums on the pruned model's and the untouched dense model's inputs,
    the corrected weights pruned on the pruned model's Hessian, in forward order."""
    xs = image_batches(2)
    cfg = PruneConfig(pattern="unstructured", sparsity=0.6, blocksize=32, targets="dense",
                      method="sparsegpt", refit=False)
    vit = TinyViT(nnx.Rngs(1), depth=1)
    res = prune_model(vit, xs, cfg)
    dense, ref = TinyViT(nnx.Rngs(1), depth=1), TinyViT(nnx.Rngs(1), depth=1)
    ref.eval()
    dense.eval()
    order = [n for _, g in forward_groups(ref, xs[0][:2], [s.name for s in res.stats]) for n in g]
    assert [s.name for s in res.stats] == order
    for name in order:
        H, C = collect_paired(ref, xs, dense, xs, name)
        layer = get_layer(ref, name)
        W = dense_target(layer_matrix(layer), layer_matrix(get_layer(dense, name)), H, C, 0.01)
        W1, _, _ = prune_layer(W[0], H, "unstructured", 0.6, blocksize=32)
        sequential._write_kernel(layer, W1[None])
    for name in order:
        np.testing.assert_allclose(np.asarray(get_layer(vit, name).kernel.get_value()),
                                   np.asarray(get_layer(ref, name).kernel.get_value()),
                                   rtol=1e-4, atol=1e-5)
    # the correction is not a no-op: the usual objective gives other weights after layer one
    own = TinyViT(nnx.Rngs(1), depth=1)
    prune_model(own, xs, PruneConfig(pattern="unstructured", sparsity=0.6, blocksize=32))
    last = order[-1]
    assert not np.allclose(np.asarray(get_layer(own, last).kernel.get_value()),
                           np.asarray(get_layer(vit, last).kernel.get_value()), atol=1e-3)


def test_an_explicit_reference_is_used_and_left_untouched():
    xs = image_batches(2)
    cfg = PruneConfig(pattern="unstructured", sparsity=0.6, blocksize=32, targets="dense")
    reference = TinyViT(nnx.Rngs(1), depth=1)
    before = [np.asarray(v) for v in jax.tree.leaves(nnx.state(reference, nnx.Param))]
    start = TinyViT(nnx.Rngs(1), depth=1)
    prune_model(start, xs, PruneConfig(pattern="unstructured", sparsity=0.3, blocksize=32))
    a, b = nnx.clone(start), nnx.clone(start)
    prune_model(a, xs, cfg, reference=reference)
    prune_model(b, xs, cfg)  # reference: the 30%-pruned model as passed in
    after = jax.tree.leaves(nnx.state(reference, nnx.Param))
    for x, y in zip(before, after, strict=True):
        np.testing.assert_array_equal(x, np.asarray(y))
    name = "blocks.0.mlp.fc2"
    assert not np.allclose(np.asarray(get_layer(a, name).kernel.get_value()),
                           np.asarray(get_layer(b, name).kernel.get_value()), atol=1e-4)


@pytest.mark.parametrize(("kw", "match"), [
    (dict(targets="teacher"), "targets must be 'self' or 'dense'"),
    (dict(targets="dense", method="magnitude"), "second-order method"),
    (dict(targets="dense", pattern="structured"), "structured pruning"),
])
def test_bad_targets_are_clear_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        PruneConfig(**kw)
