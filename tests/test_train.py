"""Losses against float64 NumPy references; augmentation; the fit loop learns and holds masks."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from taco_jax.train import augment, fit, losses


def _np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_kd_kl_matches_float64_reference():
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(2, 7, 5)) * 3
    for T in (1.0, 4.0):
        p_log, q_log = _np_log_softmax(t / T), _np_log_softmax(s / T)
        ref = T**2 * np.mean(np.sum(np.exp(p_log) * (p_log - q_log), -1))
        got = losses.kd_kl(jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32), T)
        np.testing.assert_allclose(got, ref, rtol=1e-5)
    assert float(losses.kd_kl(jnp.asarray(t), jnp.asarray(t), 2.0)) == pytest.approx(0, abs=1e-6)


def test_cross_entropy_and_feature_mse_match_reference():
    rng = np.random.default_rng(1)
    z, y = rng.normal(size=(6, 4)), rng.integers(0, 4, 6)
    ref = -np.mean(_np_log_softmax(z)[np.arange(6), y])
    np.testing.assert_allclose(losses.cross_entropy(jnp.asarray(z), jnp.asarray(y)), ref,
                               rtol=1e-5)
    unlabelled = y.copy()
    unlabelled[[1, 4]] = -1  # transfer images without labels add no CE term
    keep = unlabelled >= 0
    ref = -np.mean(_np_log_softmax(z)[keep][np.arange(keep.sum()), y[keep]])
    np.testing.assert_allclose(losses.cross_entropy(jnp.asarray(z), jnp.asarray(unlabelled)),
                               ref, rtol=1e-5)
    assert float(losses.cross_entropy(jnp.asarray(z), -np.ones(6, np.int32))) == 0.0
    s, t = rng.normal(size=(2, 3, 4, 5))
    ref = np.mean(np.sum((s - t) ** 2, (1, 2)) / np.sum(t**2, (1, 2)))
    np.testing.assert_allclose(losses.normalized_feature_mse([jnp.asarray(s)], [jnp.asarray(t)]),
                               ref, rtol=1e-5)


def test_shift_augmentation_translates_content():
    img = np.zeros((4, 8, 8, 1), np.float32)
    img[:, 3, 4, 0] = 1.0
    out = np.asarray(augment.augment(jax.random.key(0), jnp.asarray(img), "shift", max_shift=2))
    assert out.shape == img.shape
    assert np.all(out.sum((1, 2, 3)) == 1.0)  # the pixel moves, never duplicates or vanishes
    pos = np.argwhere(out[..., 0] == 1.0)[:, 1:]
    assert np.all(np.abs(pos - np.array([3, 4])) <= 2)
    with pytest.raises(ValueError, match="unknown augmentation 'rotate'"):
        augment.validate("rotate")


class _MLP(nnx.Module):
    def __init__(self, rngs):
        self.fc1 = nnx.Linear(16, 32, rngs=rngs)
        self.fc2 = nnx.Linear(32, 3, rngs=rngs)

    def __call__(self, x):
        return self.fc2(nnx.relu(self.fc1(x.reshape(x.shape[0], -1))))


def _blobs(n=300, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(3, 16)) * 3
    y = rng.integers(0, 3, n)
    x = centers[y] + rng.normal(size=(n, 16))
    return x.reshape(n, 4, 4, 1).astype(np.float32), y.astype(np.int32)


def test_fit_learns_and_constrain_keeps_masked_weights_zero():
    x, y = _blobs()
    model = _MLP(nnx.Rngs(0))
    mask = jnp.asarray(np.random.default_rng(0).random((16, 32)) > 0.5)

    def constrain(m):
        m.fc1.kernel.value = m.fc1.kernel.value * mask

    cfg = fit.FitConfig(steps=150, batch_size=32, learning_rate=3e-3, log_every=50)
    hist = fit.fit(model, x, y, cfg, lambda v: v, constrain=constrain)
    assert hist[-1]["loss"] < hist[0]["loss"]
    assert fit.evaluate(model, x, y, lambda v: v)["top1"] > 95
    assert np.all(np.asarray(model.fc1.kernel.value)[~np.asarray(mask)] == 0)


def test_fit_compiles_its_step_once(caplog):
    # A model restored from a checkpoint holds committed arrays, so the step's outputs are
    # committed, while a fresh optimizer's step counts are not: unless fit commits them first,
    # jit compiles the step again on its second call.
    x, y = _blobs(n=64)
    model, teacher = _MLP(nnx.Rngs(0)), _MLP(nnx.Rngs(1))
    nnx.update(model, jax.device_put(nnx.state(model), jax.devices()[0]))
    cfg = fit.FitConfig(steps=4, batch_size=16, kd_weight=1.0, log_every=2)
    with jax.log_compiles(), caplog.at_level(logging.WARNING):
        fit.fit(model, x, y, cfg, lambda v: v, teacher=teacher)
    compiles = [r for r in caplog.records if r.getMessage().startswith("Compiling jit(step)")]
    assert len(compiles) == 1, [r.getMessage()[:80] for r in compiles]


def test_kd_recovers_teacher_predictions_without_labels_weight():
    x, y = _blobs(seed=1)
    teacher = _MLP(nnx.Rngs(0))
    fit.fit(teacher, x, y, fit.FitConfig(steps=150, learning_rate=3e-3), lambda v: v)
    student = _MLP(nnx.Rngs(5))
    cfg = fit.FitConfig(steps=200, learning_rate=3e-3, ce_weight=0.0, kd_weight=1.0,
                        temperature=2.0)
    fit.fit(student, x, y, cfg, lambda v: v, teacher=teacher)
    agree = np.mean(fit.predict_logits(student, x, lambda v: v).argmax(1)
                    == fit.predict_logits(teacher, x, lambda v: v).argmax(1))
    assert agree > 0.95


def test_accuracy_top1_top5():
    logits = np.array([[0.1, 0.9, 0, 0, 0, 0], [0.9, 0.1, 0, 0, 0, 0.5]])
    acc = fit.accuracy(logits, np.array([1, 5]))
    assert acc["top1"] == 50.0 and acc["top5"] == 100.0
    five = fit.accuracy(logits[:, :5], np.array([1, 4]))  # top-5 of 5 classes says nothing
    assert five["top1"] == 50.0 and five["top5"] is None


def test_bad_fit_config_names_the_value():
    with pytest.raises(ValueError, match="unknown optimizer 'lion'"):
        fit.FitConfig(optimizer="lion")
    with pytest.raises(ValueError, match="kd_weight > 0 needs a teacher"):
        x, y = _blobs(n=10)
        fit.fit(_MLP(nnx.Rngs(0)), x, y, fit.FitConfig(kd_weight=1.0), lambda v: v)
    with pytest.raises(ValueError, match="unlabelled_share must be in"):
        fit.FitConfig(unlabelled_share=1.0)
    with pytest.raises(ValueError, match=r"unlabelled images must be .* got shape \(3, 5\)"):
        fit.fit(_MLP(nnx.Rngs(0)), x, y, fit.FitConfig(kd_weight=1.0), lambda v: v,
                teacher=_MLP(nnx.Rngs(1)), unlabelled=np.zeros((3, 5), np.float32))
    with pytest.raises(ValueError, match="need a teacher term"):
        fit.fit(_MLP(nnx.Rngs(0)), x, y, fit.FitConfig(), lambda v: v, unlabelled=x)


def test_mixed_batches_split_every_batch_and_cover_both_sets():
    x, y = _blobs(n=10)
    pool = np.arange(7, dtype=np.float32)[:, None, None, None] * np.ones((7, 4, 4, 1), np.float32)
    cfg = fit.FitConfig(batch_size=8, unlabelled_share=0.25)
    batches = fit._mixed_batches(x, y, pool, cfg, np.random.default_rng(0))
    seen_l, seen_u = [], []
    for _ in range(35):  # 35 batches: 6 labelled (21 epochs of 10), 2 unlabelled (10 of 7)
        bx, by = next(batches)
        assert bx.shape == (8, 4, 4, 1)
        np.testing.assert_array_equal(by[6:], -1)
        rows = [int(np.flatnonzero((x == r).all(axis=(1, 2, 3)))[0]) for r in bx[:6]]
        np.testing.assert_array_equal(by[:6], y[rows])
        seen_l += rows
        seen_u += [int(r[0, 0, 0]) for r in bx[6:]]
    # Each set is walked in whole epochs (a fresh permutation each): every example equally often.
    np.testing.assert_array_equal(np.bincount(seen_l, minlength=10), 21)
    np.testing.assert_array_equal(np.bincount(seen_u, minlength=7), 10)


def test_unlabelled_pool_carries_the_teacher_beyond_few_labels():
    """A random MLP teacher's decision function is learnt far better with KD on a large
    unlabelled pool beside 2 labelled examples per class than on the 6 labelled alone."""
    x = np.random.default_rng(2).normal(size=(900, 4, 4, 1)).astype(np.float32)
    teacher = _MLP(nnx.Rngs(0))
    teacher.fc2.kernel.value = teacher.fc2.kernel.value * 10  # confident, non-linear boundaries
    t_pred = fit.predict_logits(teacher, x, lambda v: v).argmax(1)
    few = np.concatenate([np.flatnonzero(t_pred == c)[:2] for c in range(3)])
    pool = np.setdiff1d(np.arange(600), few)
    cfg = fit.FitConfig(steps=400, batch_size=64, learning_rate=1e-2, kd_weight=1.0,
                        temperature=1.0)
    agree = {}
    for name, unlabelled in (("few", None), ("pool", x[pool])):
        student = _MLP(nnx.Rngs(7))
        fit.fit(student, x[few], t_pred[few], cfg, lambda v: v, teacher=teacher,
                unlabelled=unlabelled)
        pred = fit.predict_logits(student, x[600:], lambda v: v).argmax(1)  # held out
        agree[name] = float(np.mean(pred == t_pred[600:]))
    assert agree["pool"] > 0.8 and agree["pool"] > agree["few"] + 0.25, agree



def test_microbatches_give_the_whole_batchs_training_without_batchnorm():
    """Accumulating over micro-batches is the whole batch's step when nothing couples the
    rows (a LayerNorm ViT): CE with unlabelled rows spread unevenly, mixup, KD. Weights after
    a few AdamW steps agree to float32 round-off."""
    from taco_jax import models
    from taco_jax.data import preprocess

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (40, 28, 28, 1), dtype=np.uint8)
    y = rng.integers(0, 3, 40)
    pool = rng.integers(0, 256, (30, 28, 28, 1), dtype=np.uint8)
    teacher = models.create("vit_mini", num_classes=3, rngs=nnx.Rngs(1), depth=2)
    weights = []
    for microbatch in (0, 4, 5):  # 5: two 5-row halves of a 10-row batch
        model = models.create("vit_mini", num_classes=3, rngs=nnx.Rngs(0), depth=2)
        cfg = fit.FitConfig(steps=3, batch_size=10, kd_weight=1.0, ce_weight=0.5, mixup=0.4,
                            microbatch=microbatch, log_every=3, unlabelled_share=0.3)
        fit.fit(model, x, y, cfg, preprocess.for_model(model), teacher=teacher,
                unlabelled=pool)
        weights.append(nnx.state(model, nnx.Param))
    for other in weights[1:]:
        # AdamW's normalised steps turn round-off in near-zero gradients into ~1e-6 moves;
        # a wrongly weighted term moves weights by ~learning rate (1e-3) per step.
        jax.tree.map(lambda a, b: np.testing.assert_allclose(b, a, rtol=1e-3, atol=2e-5),
                     weights[0], other)
    assert fit._micro_parts(10, 4) == 5 and fit._micro_parts(16, 4) == 4
    assert fit._micro_parts(16, 0) == fit._micro_parts(16, 32) == 1


def test_microbatches_cut_the_compiled_training_steps_memory():
    """XLA's own accounting of the compiled programs: a micro-batch's gradient program (what
    each of the four calls runs) keeps a fraction of the whole batch's backward activations
    (the gradients' own buffers stay); BatchNorm statistics still move."""
    from taco_jax import models

    model = models.create("resnet18", num_classes=3, rngs=nnx.Rngs(0))
    model.train()
    x = jax.random.normal(jax.random.key(0), (16, 128, 128, 3))
    y = jnp.zeros(16, jnp.int32)
    cfg = fit.FitConfig(microbatch=4)

    def whole(model):
        return nnx.value_and_grad(fit._loss)(model, None, x, y, y, 1.0, cfg, None)

    share = (jnp.float32(0.25),) * 3
    temp = {"whole": nnx.jit(whole).lower(model).compile().memory_analysis(),
            "micro": fit._part_grads.lower(model, None, x[:4], y[:4], y[:4], 1.0, share, cfg,
                                           None).compile().memory_analysis()}
    temp = {k: v.temp_size_in_bytes for k, v in temp.items()}
    assert temp["micro"] < 0.45 * temp["whole"], temp
    before = np.asarray(model.bn1.mean.value)
    loss, _ = fit._accumulated(model, None, x, y, y, 1.0, cfg, None, 4)
    assert np.isfinite(loss) and not np.allclose(np.asarray(model.bn1.mean.value), before)
