"""Pipeline parts: config variants, head restriction, checkpoints, non-zero counting."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from taco_jax import checkpoint, export, stages
from taco_jax.config_variants import parse_variant
from taco_jax.methods import adapt
from taco_jax.report import compression
from taco_jax.run import sweep
from taco_jax.train import batchnorm


class _Net(nnx.Module):
    head_name = "head"

    def __init__(self, rngs):
        self.fc = nnx.Linear(6, 8, rngs=rngs)
        self.bn = nnx.BatchNorm(8, rngs=rngs)
        self.head = nnx.Linear(8, 5, rngs=rngs)

    def forward_features(self, x):
        return nnx.relu(self.bn(self.fc(x)))

    def __call__(self, x):
        return self.head(self.forward_features(x))


def test_parse_variant_types_switches_and_errors():
    allowed = {"model": str, "sparsity": float, "shots": int, "runlocal": bool}
    got = parse_variant("model=vit_mini, sparsity=0.75,shots=16,runlocal", allowed)
    assert got == {"model": "vit_mini", "sparsity": 0.75, "shots": 16, "runlocal": True}
    assert parse_variant(None, allowed) == {}
    with pytest.raises(ValueError, match=r"unknown config variant key 'sparsty'.*allowed: model"):
        parse_variant("sparsty=0.5", allowed)
    with pytest.raises(ValueError, match=r"shots='many' is not a valid int"):
        parse_variant("shots=many", allowed)


def test_restrict_head_keeps_the_task_rows():
    net = _Net(nnx.Rngs(0))
    net.eval()
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 6)), jnp.float32)
    full = np.asarray(net(x))
    adapt.restrict_head(net, np.array([3, 0]))
    np.testing.assert_allclose(np.asarray(net(x)), full[:, [3, 0]], rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="must index the 2 source classes"):
        adapt.restrict_head(net, np.array([2]))


def test_linear_probe_reaches_the_regularized_logistic_optimum():
    """The probe head is the minimiser of the convex objective: its float64 numpy gradient
    (softmax CE + l2 term, written out here) vanishes; the model's logits are the features
    times the new head; the rest of the model is untouched."""
    net = _Net(nnx.Rngs(0))
    net.eval()
    rng = np.random.default_rng(0)
    images = rng.normal(size=(60, 6)).astype(np.float32)
    labels = rng.integers(0, 3, 60)
    fc_before = np.array(net.fc.kernel.value)
    net, info = adapt.linear_probe(net, images, labels, 3, lambda x: x, l2=1e-2)

    X = np.asarray(net.forward_features(jnp.asarray(images)), np.float64)
    W, b = np.asarray(net.head.kernel.value, np.float64), np.asarray(net.head.bias.value)

    def gradient(W, b):
        z = X @ W + b
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        p[np.arange(len(labels)), labels] -= 1
        return np.concatenate([(X.T @ p / len(X) + 1e-2 * W).ravel(), p.mean(0)])

    assert np.abs(gradient(np.zeros_like(W), np.zeros_like(b))).max() > 0.05  # a real problem
    assert np.abs(gradient(W, b)).max() < 2e-4, info
    assert W.shape == (8, 3) and info["train_top1"] > 40
    np.testing.assert_allclose(np.asarray(net(jnp.asarray(images))), X @ W + b, rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_array_equal(np.asarray(net.fc.kernel.value), fc_before)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\)"):
        adapt.linear_probe(net, images, labels, 2, lambda x: x)
    with pytest.raises(ValueError, match="l2 must be > 0"):
        adapt.linear_probe(net, images, labels, 3, lambda x: x, l2=0.0)


def test_cross_validated_l2_regularizes_noise_and_not_signal():
    """Labels unrelated to the features: the held-out loss is least with the most
    regularization. Labels a feature separates: a weakly regularized probe generalizes best."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 6)).astype(np.float32)
    noise = rng.integers(0, 2, 80)
    signal = (x[:, 0] > 0).astype(int)
    grid = (1e-4, 1e-2, 1.0)
    l2, losses = adapt.cross_validated_l2(x, noise, 2, grid=grid)
    assert l2 == 1.0 and set(losses) == set(grid)
    l2, losses = adapt.cross_validated_l2(x, signal, 2, grid=grid)
    assert l2 < 1.0 and losses[l2] < 0.5 * losses[1.0]
    with pytest.raises(ValueError, match=">= 2 labelled images per class"):
        adapt.cross_validated_l2(x[:3], np.array([0, 1, 1]), 2)


def test_checkpoint_round_trip_is_bit_exact(tmp_path):
    a, b = _Net(nnx.Rngs(0)), _Net(nnx.Rngs(1))
    a.bn.mean.value = jnp.arange(8.0)  # batch statistics travel with the params
    checkpoint.save_state(tmp_path / "ck", a)
    checkpoint.restore_state(tmp_path / "ck", b)
    for x, y in zip(nnx.state(a).flat_state(), nnx.state(b).flat_state(), strict=True):
        np.testing.assert_array_equal(np.asarray(x[1].value), np.asarray(y[1].value))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        checkpoint.restore_state(tmp_path / "missing", b)


def test_sparsity_summary_counts_weights_not_masks():
    net = _Net(nnx.Rngs(0))
    mask = np.zeros((6, 8), bool)
    mask[:, :2] = True
    net.fc.kernel.value = net.fc.kernel.value * mask
    s = compression.summarize(net, {"fc": mask})
    assert s["pruned_layers"] == {"params": 48, "nonzero": 12, "sparsity": 0.75,
                                  "compression": 4.0}
    total = 6 * 8 + 8 + 8 + 8 + 8 * 5 + 5  # fc, fc bias, bn scale+bias, head
    zero_init_biases = 8 + 8 + 5  # fc bias, bn bias, head bias start at zero
    assert s["model"]["params"] == total
    assert s["model"]["nonzero"] == total - 36 - zero_init_biases


def test_macs_skip_one_mac_per_zero_weight_and_output_position():
    net = _Net(nnx.Rngs(0))
    mask = np.zeros((6, 8), bool)
    mask[:3] = True  # 24 of 48 fc weights kept
    net.fc.kernel.value = net.fc.kernel.value * mask
    m = compression.macs(net, {"fc": mask}, (6,))
    assert m["dense"] == 6 * 8 + 8 * 5  # one position per image for a Linear on (1, 6)
    assert m["sparse"] == m["dense"] - 24
    assert m["reduction"] == pytest.approx(88 / 64)


def test_stage_store_round_trip_and_interrupted_save(tmp_path):
    a, b = _Net(nnx.Rngs(0)), _Net(nnx.Rngs(1))
    store = stages.StageStore(tmp_path)
    assert not store.done("prune")
    masks = {"fc": np.arange(48).reshape(6, 8) % 3 == 0}
    store.save("prune", a, masks, {"accuracy": 91.5})
    assert store.done("prune")
    got_masks, info = store.load("prune", b)
    np.testing.assert_array_equal(got_masks["fc"], masks["fc"])
    assert info == {"accuracy": 91.5} == store.info("prune")  # the record alone, nothing restored
    np.testing.assert_array_equal(np.asarray(b.fc.kernel.value), np.asarray(a.fc.kernel.value))
    (tmp_path / "prune" / "info.json").unlink()  # as if killed before the record was written
    assert not store.done("prune")
    assert not stages.StageStore(None).done("prune")


def test_bsr_export_round_trips_the_layer_matrix(tmp_path):
    from taco_jax.kernels.bsr import bsr_to_dense

    net = _Net(nnx.Rngs(0))
    w = np.asarray(net.fc.kernel.value)  # (6, 8) = (d_in, d_out)
    mask = np.zeros_like(w, bool)
    mask[:2, 4:] = True  # one 4x2 block of W = kernel.T (d_out 8, d_in 6)
    net.fc.kernel.value = jnp.asarray(w * mask)
    bsr = export.to_bsr(net, {"fc": mask}, (4, 2))
    assert int(bsr["fc"].data.shape[0]) == 1
    np.testing.assert_array_equal(np.asarray(bsr_to_dense(bsr["fc"])), (w * mask).T)
    assert export.to_bsr(net, {"fc": mask}, (3, 4)) == {}  # 8 x 6 is not tiled by 3 x 4
    summary = export.save_bsr(tmp_path / "bsr.npz", bsr)
    assert summary["fc"]["blocks"] == 1 and summary["fc"]["block_density"] == 1 / 6
    with np.load(tmp_path / "bsr.npz") as f:
        np.testing.assert_array_equal(f["fc/data"], np.asarray(bsr["fc"].data))
    assert export.block_shape_for("block16x32") == (16, 32)
    assert export.block_shape_for("2:4") == (16, 16)


def test_sweep_plot_writes_a_png(tmp_path):
    points = [{"sparsity": s, "compression": 1 / (1 - s), "taco_top1": 90 - 10 * s,
               "baselines_top1": {"magnitude": 85 - 20 * s, "magnitude_gmp": 80 - 30 * s}}
              for s in (0.5, 0.9)]
    main = {"dense": {"top1": 95.0}, "baselines": {"dense_finetune": {"top1": 93.0}},
            "task": {"classes": ["cat", "cow"], "shots": 8}}
    sweep.plot(points, main, tmp_path / "s.png")
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_batchnorm_reestimate_sets_the_calibration_statistics():
    net = _Net(nnx.Rngs(0))
    x = np.random.default_rng(0).normal(2.0, 3.0, size=(40, 6)).astype(np.float32)
    n = batchnorm.reestimate(net, x, lambda v: v, batch_size=20)
    assert n == 1 and net.bn.use_running_average  # eval mode after
    h = x.astype(np.float64) @ np.asarray(net.fc.kernel.value, np.float64) + np.asarray(
        net.fc.bias.value)
    halves = h.reshape(2, 20, 8)  # mean over the two batches of each batch's statistics
    np.testing.assert_allclose(np.asarray(net.bn.mean.value), halves.mean(1).mean(0), rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(np.asarray(net.bn.var.value), halves.var(1).mean(0), rtol=1e-4)
    assert net.bn.momentum == 0.99  # nnx default restored


def test_batchnorm_reestimate_caps_big_images_to_equal_batches(monkeypatch):
    from taco_jax.train import fit

    monkeypatch.setattr(fit, "EVAL_PIXELS", 16 * 4)  # 16 images of 2x2: the cap binds
    net = _Net(nnx.Rngs(0))
    x = np.random.default_rng(1).normal(1.0, 2.0, size=(45, 2, 2, 6)).astype(np.float32)
    batchnorm.reestimate(net, x, lambda v: v)  # asks for 256: capped to 16, evened to 3 x 15
    h = x.astype(np.float64) @ np.asarray(net.fc.kernel.value, np.float64) + np.asarray(
        net.fc.bias.value)
    thirds = h.reshape(3, 15 * 2 * 2, 8)
    np.testing.assert_allclose(np.asarray(net.bn.mean.value), thirds.mean(1).mean(0), rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(np.asarray(net.bn.var.value), thirds.var(1).mean(0), rtol=1e-4)


def test_mixup_blends_pairs_and_alpha_zero_is_identity():
    import jax

    from taco_jax.train import augment

    x = jnp.asarray(np.random.default_rng(0).normal(size=(6, 4, 4, 1)), jnp.float32)
    same, lam, perm = augment.mixup(jax.random.key(0), x, 0.0)
    assert same is x and float(lam) == 1.0
    mixed, lam, perm = augment.mixup(jax.random.key(1), x, 0.4)
    assert 0 <= float(lam) <= 1 and sorted(np.asarray(perm).tolist()) == list(range(6))
    ref = float(lam) * np.asarray(x) + (1 - float(lam)) * np.asarray(x)[np.asarray(perm)]
    np.testing.assert_allclose(np.asarray(mixed), ref, rtol=1e-6, atol=1e-6)


def test_calibration_views_are_the_images_then_augmented_copies():
    from types import SimpleNamespace

    from taco_jax.methods import taco
    from taco_jax.train import fit

    x = np.random.default_rng(0).random((10, 8, 8, 1)).astype(np.float32)
    data = SimpleNamespace(preprocess=lambda v: 2.0 * v - 1.0)
    cfg = taco.TacoConfig(calibration_views=3, calibration_batch=4,
                          recover=fit.FitConfig(augment="shift_flip"))
    batches = taco._calibration_batches(x, data, cfg)
    assert [len(b) for b in batches] == [4] * 7 + [2]
    got = np.concatenate(batches)
    np.testing.assert_array_equal(got[:10], 2.0 * x - 1.0)
    for view in (got[10:20], got[20:]):
        assert not np.allclose(view, got[:10])
        # each augmented image is a shift (and maybe flip) of its original: same pixel values
        # up to the zero padding that came in
        for a, b in zip(view, got[:10], strict=True):
            assert np.isin(np.round(a[a != 0], 6), np.round(b, 6)).all()
    with pytest.raises(ValueError, match="calibration_views must be >= 1, got 0"):
        taco.TacoConfig(calibration_views=0)
    with pytest.raises(ValueError, match="calibration_views=2 needs an augmentation"):
        taco.TacoConfig(calibration_views=2, recover=fit.FitConfig(augment="none"))


def _resnet_with_statistics():
    from taco_jax.models import registry

    model = registry.create("resnet_mini", num_classes=5)
    rng = np.random.default_rng(0)
    for _, bn in model.iter_modules():
        if isinstance(bn, nnx.BatchNorm):  # running statistics far from the init's 0 / 1
            bn.mean.set_value(jnp.asarray(rng.normal(size=bn.num_features), jnp.float32))
            bn.var.set_value(jnp.asarray(rng.uniform(0.5, 2.0, bn.num_features), jnp.float32))
    model.eval()
    return model, rng


def _channel_norms(w) -> np.ndarray:
    w = np.asarray(w, np.float64)
    return np.sqrt((w ** 2).sum(tuple(range(w.ndim - 1))))


def test_restore_scale_keeps_the_function_and_the_dense_norms():
    """Compensation-like growth (kept weights x1–4, half of them zeroed) is scaled back per
    output channel to the dense norm of the kept weights, and the model's logits stay those of
    the grown weights (the factor lives in the BatchNorm), masked and structured alike."""
    from taco_jax.models.paths import get_layer
    from taco_jax.models.shrink import batchnorm_after, infer_pairs, shrink_pair

    model, rng = _resnet_with_statistics()
    names = ["layer2.0.conv1", "layer2.0.downsample.0"]
    before = {n: np.asarray(get_layer(model, n).kernel.get_value()) for n in names}
    for n in names:
        keep = rng.random(before[n].shape) < 0.5
        grown = before[n] * keep * rng.uniform(1.0, 4.0, before[n].shape)
        get_layer(model, n).kernel.set_value(jnp.asarray(grown, jnp.float32))
    pair = next(p for p in infer_pairs(model) if p.consumer == "layer1.0.conv2")
    dense = np.asarray(get_layer(model, pair.consumer).kernel.get_value())
    kept = np.arange(0, dense.shape[-2], 2)
    shrink_pair(model, pair, kept)
    consumer = get_layer(model, pair.consumer)
    consumer.kernel.set_value(consumer.kernel.get_value() * 3.0)
    x = jnp.asarray(rng.normal(size=(4, 28, 28, 1)), jnp.float32)
    logits = np.asarray(model(x))

    factors = batchnorm.restore_scale(model, {**before, pair.consumer: dense},
                                      {pair.consumer: kept})
    assert set(factors) == {*names, pair.consumer}
    for n in names:
        w = np.asarray(get_layer(model, n).kernel.get_value())
        np.testing.assert_allclose(_channel_norms(w), _channel_norms(before[n] * (w != 0)),
                                   rtol=1e-5)
    np.testing.assert_allclose(_channel_norms(consumer.kernel.get_value()),
                               _channel_norms(dense[:, :, kept, :]), rtol=1e-5)
    np.testing.assert_allclose(factors[pair.consumer], 1 / 3, rtol=1e-5)
    assert min(c.min() for c in factors.values()) < 0.5  # the growth was undone
    np.testing.assert_allclose(np.asarray(model(x)), logits, rtol=1e-3, atol=1e-4)
    bn = get_layer(model, batchnorm_after(model)["layer2.0.downsample.0"])
    assert bn is get_layer(model, "layer2.0.downsample.1")
    with pytest.raises(ValueError, match=r"layer1\.0\.conv2.*structured cut needs kept"):
        batchnorm.restore_scale(model, {pair.consumer: dense})


def test_restore_scale_leaves_layers_without_batchnorm():
    from taco_jax.models import registry
    from taco_jax.models.paths import get_layer
    from taco_jax.models.shrink import batchnorm_after

    vit = registry.create("vit_mini", num_classes=5)
    fc1 = get_layer(vit, "blocks.0.mlp.fc1")
    w = np.asarray(fc1.kernel.get_value())
    assert batchnorm_after(vit) == {}
    assert batchnorm.restore_scale(vit, {"blocks.0.mlp.fc1": 2 * w}) == {}
    np.testing.assert_array_equal(np.asarray(fc1.kernel.get_value()), w)
    convnext = registry.create("convnext_tiny", num_classes=5, depths=(1, 1), dims=(8, 16),
                               in_chans=1)
    assert batchnorm_after(convnext) == {}  # LayerNorm, and downsample.0 is the norm
    resnet = registry.create("resnet_mini", num_classes=5)
    assert batchnorm_after(resnet)["conv1"] == "bn1"
    assert batchnorm_after(resnet)["layer3.1.conv2"] == "layer3.1.bn2"
