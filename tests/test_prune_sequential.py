"""Sequential pruning: forward order, shared Hessians, shrinking, masks, resume."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_prune_fixtures import TinyCNN, TinyViT, image_batches, randomize_batchnorm

from taco_jax.models.paths import get_layer, named_layers
from taco_jax.models.shrink import infer_pairs, shrink_pair
from taco_jax.prune import sequential
from taco_jax.prune.hessian import collect_hessians
from taco_jax.prune.layout import layer_inputs, layer_matrix
from taco_jax.prune.segments import forward_groups
from taco_jax.prune.sequential import PruneConfig, apply_masks, prune_model
from taco_jax.prune.solver import prune_layer


def test_forward_order_and_shared_inputs():
    vit = TinyViT(nnx.Rngs(0))
    names = sorted(named_layers(vit))
    groups = [g for _, g in forward_groups(vit, image_batches(1)[0][:2], names)]
    assert groups[:3] == [["patch"], ["blocks.0.attn.qkv"], ["blocks.0.attn.proj"]]
    cnn = TinyCNN(nnx.Rngs(0))
    groups = [g for _, g in forward_groups(cnn, image_batches(1)[0][:2], sorted(named_layers(cnn)))]
    flat = [n for g in groups for n in g]
    assert flat.index("block.conv1") < flat.index("block.conv2") < flat.index("block.conv3")
    # conv1 (1x1, stride 1) and downsample (1x1, stride 2) read the same x but unfold it
    # differently: separate Hessians.
    assert ["block.downsample"] in groups and ["block.conv1"] in groups


def test_hessian_of_conv_matches_explicit_patches():
    cnn = randomize_batchnorm(TinyCNN(nnx.Rngs(0)))
    cnn.eval()
    xs = image_batches(2)
    H = collect_hessians(cnn, xs, ["grouped", "block.conv2"])
    x = np.concatenate(xs)
    h = cnn.block(nnx.relu(cnn.conv_stem(jnp.asarray(x))))
    X = np.float64(layer_inputs(cnn.grouped, h))
    ref = 2 * np.einsum("ngi,ngj->gij", X, X) / X.shape[0]
    np.testing.assert_allclose(np.asarray(H["grouped"]), ref, rtol=1e-4, atol=1e-5)
    # an ungrouped conv takes the plain 2-D product: the same sums
    b = cnn.block
    stem = nnx.relu(cnn.conv_stem(jnp.asarray(x)))
    X2 = np.float64(layer_inputs(b.conv2, nnx.relu(b.bn1(b.conv1(stem)))))[:, 0]
    assert H["block.conv2"].shape == (16 * 9, 16 * 9)
    np.testing.assert_allclose(np.asarray(H["block.conv2"]), 2 * X2.T @ X2 / len(X2),
                               rtol=1e-4, atol=1e-5)


def test_sequential_inputs_flow_through_pruned_layers():
    """prune_model on a 2-block ViT equals a hand-written sequential loop."""
    xs = image_batches(2)
    cfg = PruneConfig(pattern="unstructured", sparsity=0.6, blocksize=32, method="sparsegpt",
                      refit=False)
    vit = TinyViT(nnx.Rngs(1))
    res = prune_model(vit, xs, cfg)
    ref = TinyViT(nnx.Rngs(1))
    ref.eval()
    order = [n for _, g in forward_groups(ref, xs[0][:2], [s.name for s in res.stats])
             for n in g]
    assert [s.name for s in res.stats] == order
    for name in order:
        H = collect_hessians(ref, xs, [name])[name]
        layer = get_layer(ref, name)
        W, _, _ = prune_layer(layer_matrix(layer)[0], H, "unstructured", 0.6, blocksize=32)
        sequential._write_kernel(layer, W[None])
    for name in order:
        np.testing.assert_allclose(np.asarray(get_layer(vit, name).kernel.get_value()),
                                   np.asarray(get_layer(ref, name).kernel.get_value()),
                                   rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("pattern", [pytest.param("unstructured", marks=pytest.mark.slow),
                                     pytest.param("2:4", marks=pytest.mark.slow), "block8x8"])
def test_masks_sparsity_and_apply_masks(pattern):
    vit = TinyViT(nnx.Rngs(0))
    res = prune_model(vit, image_batches(2), PruneConfig(pattern=pattern, sparsity=0.5))
    assert "head" not in res.masks and len(res.masks) == 9
    for st in res.stats:
        assert st.sparsity == pytest.approx(0.5, abs=1e-6), st
        assert 0 < st.rel_error < 1 and st.seconds > 0
        k = get_layer(vit, st.name).kernel.get_value()
        assert res.masks[st.name].shape == k.shape
        assert np.all(np.asarray(k)[~res.masks[st.name]] == 0)
    # recovery perturbs the weights; apply_masks zeroes exactly the pruned ones again
    for name in res.masks:
        get_layer(vit, name).kernel.set_value(get_layer(vit, name).kernel.get_value() + 1.0)
    apply_masks(vit, res.masks)
    for name, m in res.masks.items():
        k = np.asarray(get_layer(vit, name).kernel.get_value())
        assert np.all(k[~m] == 0) and np.all(k[m] != 0)


def test_cnn_with_grouped_and_depthwise_convs():
    cnn = randomize_batchnorm(TinyCNN(nnx.Rngs(0)))
    res = prune_model(cnn, image_batches(2), PruneConfig(sparsity=0.5, blocksize=64))
    by = {s.name: s for s in res.stats}
    assert set(by) == set(named_layers(cnn)) - {"fc"}
    # solved group by group: each conv group at 50 % (depthwise: 4 of 9 in every channel)
    zeros = (~np.asarray(res.masks["grouped"])).reshape(-1, 16).sum(0)  # per output channel
    assert zeros[:8].sum() == zeros[8:].sum() == 8 * 72 // 2
    zeros = (~np.asarray(res.masks["dw"])).reshape(-1, 16).sum(0)
    assert np.all(zeros == 4) and by["dw"].sparsity == pytest.approx(4 / 9)
    assert np.isfinite(np.asarray(cnn(jnp.asarray(image_batches(1)[0])))).all()


def test_nm_leaves_depthwise_dense_with_a_warning():
    cnn = randomize_batchnorm(TinyCNN(nnx.Rngs(0)))
    res = prune_model(cnn, image_batches(1), PruneConfig(pattern="2:4"), layers=["dw", "grouped"])
    assert "dw" not in res.masks  # 3x3 depthwise rows of 9 cannot hold 2:4
    assert "grouped" in res.masks  # 8 channels x 9 = 72 columns per group


def test_unknown_layer_name_is_a_clear_error():
    vit = TinyViT(nnx.Rngs(0))
    with pytest.raises(KeyError, match=r"no layer named 'blocks\.0\.mlp\.fc3'.*prunable layers"):
        prune_model(vit, image_batches(1), PruneConfig(), layers=["blocks.0.mlp.fc3"])
    with pytest.raises(ValueError, match="re-iterable"):
        prune_model(vit, iter(image_batches(1)), PruneConfig())
    with pytest.raises(ValueError, match=r"\['blocks\.9\.mlp\.fc1'\] are not layers of the "
                       r"TinyViT .* its layers: blocks\.0\.attn\.proj"):
        prune_model(vit, image_batches(1), PruneConfig(overrides={"blocks.9.mlp.fc1": 0.5}))


def test_overrides():
    vit = TinyViT(nnx.Rngs(0))
    cfg = PruneConfig(sparsity=0.5, overrides={"blocks.1.mlp.fc2": 0.8,
                                               "blocks.0.mlp.fc1": ("2:4", 0.0)})
    res = prune_model(vit, image_batches(1), cfg)
    by = {s.name: s for s in res.stats}
    assert by["blocks.1.mlp.fc2"].sparsity == pytest.approx(0.8, abs=1e-3)
    assert by["blocks.0.mlp.fc1"].pattern == "2:4"


# ------------------------------------------------------------------ structured


def test_shrink_is_exact_when_the_columns_are_zero():
    """Zero the consumer's input columns, then cutting them (and producer rows, BN channels,
    q/k/v heads) must not change the model's output."""
    x = jnp.asarray(image_batches(1)[0])
    for model in (TinyViT(nnx.Rngs(0)), randomize_batchnorm(TinyCNN(nnx.Rngs(0)))):
        model.eval()
        pairs = infer_pairs(model)
        assert pairs
        for p in pairs:
            layer = get_layer(model, p.consumer)
            width = layer.in_features
            units = np.arange(width // p.group_size)
            kept_units = np.sort(np.random.default_rng(0).permutation(units)[: len(units) // 2])
            kept = (kept_units[:, None] * p.group_size + np.arange(p.group_size)).ravel()
            k = np.asarray(layer.kernel.get_value()).copy()
            drop = np.setdiff1d(np.arange(width), kept)
            if k.ndim == 2:
                k[drop] = 0
            else:
                k[:, :, drop] = 0
            layer.kernel.set_value(jnp.asarray(k))
        y0 = model(x)
        for p in pairs:
            layer = get_layer(model, p.consumer)
            k = np.asarray(layer.kernel.get_value())
            alive = np.flatnonzero(np.abs(k.reshape(-1, k.shape[-2], k.shape[-1])).sum((0, 2))
                                   if k.ndim == 4 else np.abs(k).sum(1))
            shrink_pair(model, p, alive)
        np.testing.assert_allclose(np.asarray(model(x)), np.asarray(y0), rtol=1e-4, atol=1e-5)


def test_structured_shrinks_heads_neurons_and_channels():
    x = jnp.asarray(image_batches(1)[0])
    vit = TinyViT(nnx.Rngs(0))
    res = prune_model(vit, image_batches(2), PruneConfig(pattern="structured", sparsity=0.5))
    assert vit.blocks[0]["mlp"].fc1.kernel.get_value().shape == (32, 64)
    assert vit.blocks[0]["mlp"].fc2.kernel.get_value().shape == (64, 32)
    assert vit.blocks[0]["attn"].qkv.kernel.get_value().shape == (32, 3 * 16)  # 2 of 4 heads
    assert vit.blocks[0]["attn"].proj.kernel.get_value().shape == (16, 32)
    assert len(res.kept["blocks.0.attn.proj"]) == 16 and np.isfinite(vit(x)).all()
    cnn = randomize_batchnorm(TinyCNN(nnx.Rngs(0)))
    prune_model(cnn, image_batches(2), PruneConfig(pattern="structured", sparsity=0.25,
                                                   channel_multiple=1))
    assert cnn.block.conv2.kernel.get_value().shape == (3, 3, 12, 12)
    assert cnn.block.bn1.scale.get_value().shape == (12,)
    assert cnn.block.conv3.kernel.get_value().shape == (1, 1, 12, 16)
    assert np.isfinite(cnn(x)).all()
    # the default keeps whole multiples of 8 channels: 12 of 16 rounds to 16 (a tie keeps more),
    # 10 of 16 to 8
    for sparsity, kept in ((0.25, 16), (0.4, 8)):
        cnn = randomize_batchnorm(TinyCNN(nnx.Rngs(0)))
        prune_model(cnn, image_batches(2), PruneConfig(pattern="structured", sparsity=sparsity))
        assert cnn.block.conv2.kernel.get_value().shape == (3, 3, kept, kept)
        assert cnn.block.conv3.kernel.get_value().shape == (1, 1, kept, 16)


# ------------------------------------------------------------------ resume


class _InterruptError(Exception):
    pass


def test_resume_gives_the_same_result(tmp_path, monkeypatch):
    xs = image_batches(2)
    cfg = PruneConfig(pattern="unstructured", sparsity=0.7, blocksize=32)
    full = TinyViT(nnx.Rngs(3))
    want = prune_model(full, xs, cfg)

    calls = {"n": 0}
    real = sequential._prune_one

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise _InterruptError
        return real(*a, **k)

    part = TinyViT(nnx.Rngs(3))
    monkeypatch.setattr(sequential, "_prune_one", flaky)
    with pytest.raises(_InterruptError):
        prune_model(part, xs, cfg, checkpoint_dir=str(tmp_path))
    monkeypatch.setattr(sequential, "_prune_one", real)
    again = TinyViT(nnx.Rngs(3))  # a fresh process would start from the dense model
    got = prune_model(again, xs, cfg, checkpoint_dir=str(tmp_path))
    assert [s.name for s in got.stats] == [s.name for s in want.stats]
    for name in want.masks:
        np.testing.assert_array_equal(got.masks[name], want.masks[name])
        np.testing.assert_array_equal(np.asarray(get_layer(again, name).kernel.get_value()),
                                      np.asarray(get_layer(full, name).kernel.get_value()))
    with pytest.raises(ValueError, match="different config"):
        prune_model(TinyViT(nnx.Rngs(3)), xs, PruneConfig(sparsity=0.5),
                    checkpoint_dir=str(tmp_path))


class _EqualValues(nnx.Module):
    """b reads a different array that happens to equal a's input (as residual blocks at a
    zero-initialised BatchNorm): it must not share a's Hessian or be solved early."""

    def __init__(self, rngs):
        self.a = nnx.Linear(3, 3, rngs=rngs)
        self.b = nnx.Linear(3, 3, rngs=rngs)
        self.c = nnx.Linear(3, 3, rngs=rngs)

    def __call__(self, x):
        h = self.a(x)
        return self.c(self.b(x + 0.0) + h)


def test_equal_values_are_not_shared_inputs():
    m = _EqualValues(nnx.Rngs(0))
    groups = forward_groups(m, jnp.ones((1, 2, 2, 3)), ["a", "b", "c"])
    assert groups == [(0, ["a"]), (0, ["b"]), (0, ["c"])]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vit_mini", "resnet_mini"])
def test_zoo_models_prune_and_shrink(name):
    """The zoo's mini models: unstructured masks and structured cuts both run end to end."""
    import taco_jax.models.resnet
    import taco_jax.models.vit  # noqa: F401
    from taco_jax.models import registry

    xs = [np.random.default_rng(0).normal(size=(4, 28, 28, 1)).astype(np.float32)]
    model = registry.create(name, num_classes=3)
    res = prune_model(model, xs, PruneConfig(sparsity=0.5))
    assert res.masks and model.head_name not in res.masks
    model = registry.create(name, num_classes=3)
    before = sum(np.prod(v.shape) for v in jax.tree.leaves(nnx.state(model, nnx.Param)))
    res = prune_model(model, xs, PruneConfig(pattern="structured", sparsity=0.5))
    after = sum(np.prod(v.shape) for v in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert res.kept and after < 0.8 * before
    assert np.isfinite(np.asarray(model(jnp.asarray(xs[0])))).all()


def test_admm_lowers_the_layer_errors_at_the_same_sparsity():
    """method="admm" (re-solved, as "auto" runs it on wide layers) on a ViT at 90%: the same
    number of weights in every layer as SparseGPT + re-solve, the first layer (the same Hessian
    in both runs; later ones see differently pruned inputs) and the layers' total error lower."""
    xs = image_batches(2)
    stats = {}
    for method in ("sparsegpt", "admm"):
        cfg = PruneConfig(pattern="unstructured", sparsity=0.9, method=method)
        model = TinyViT(nnx.Rngs(1))
        res = prune_model(model, xs, cfg)
        stats[method] = {s.name: s for s in res.stats}
        for name, keep in res.masks.items():  # pruned weights are zero in the model
            assert not np.asarray(get_layer(model, name).kernel.get_value())[~keep].any()
    a, b = stats["admm"], stats["sparsegpt"]
    assert set(a) == set(b)
    for name, s in a.items():
        assert s.sparsity == b[name].sparsity
    first = next(iter(a))
    assert a[first].rel_error < 0.9 * b[first].rel_error
    assert sum(s.rel_error for s in a.values()) < 0.9 * sum(s.rel_error for s in b.values())
