"""Residual-stream pruning: the streams' writers and readers, the coupled solve against float64
least squares and a brute-force greedy, and the cut through prune_model, restore_scale and the
specialist on disk."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from taco_jax import models
from taco_jax.export.specialist import load_specialist, save_specialist
from taco_jax.models.paths import get_layer
from taco_jax.models.shrink import (
    cuts_by_consumer,
    infer_pairs,
    kept_channels,
    residual_streams,
    shrink_pair,
)
from taco_jax.prune import sequential, speed_budget
from taco_jax.prune.streams import coupled_prune
from taco_jax.train import batchnorm

BOTTLENECK = dict(widths=(4, 8), layers=(2, 2), in_chans=1)  # resnet50's blocks, tiny


def _model(arch: str, seed: int = 0) -> nnx.Module:
    overrides = BOTTLENECK if arch == "resnet50" else {}
    model = models.create(arch, num_classes=4, rngs=nnx.Rngs(seed), **overrides)
    rng = np.random.default_rng(seed)
    for _, bn in model.iter_modules():
        if isinstance(bn, nnx.BatchNorm):  # statistics and affine far from the init's
            c = bn.num_features
            bn.mean.set_value(jnp.asarray(rng.normal(size=c), jnp.float32))
            bn.var.set_value(jnp.asarray(rng.uniform(0.5, 2.0, c), jnp.float32))
            bn.scale.set_value(jnp.asarray(rng.uniform(0.5, 1.5, c), jnp.float32))
            bn.bias.set_value(jnp.asarray(rng.normal(size=c), jnp.float32))
    model.eval()
    return model


def _images(n: int = 4, seed: int = 1) -> jnp.ndarray:
    return jnp.asarray(np.random.default_rng(seed).normal(size=(n, 28, 28, 1)), jnp.float32)


@pytest.mark.parametrize("arch", ["resnet_mini", "resnet50"])
def test_a_silent_stream_channel_is_cut_without_changing_the_logits(arch):
    """Make channel c of each stream exactly zero wherever it is written (kernel column, and
    the BatchNorm's bias and mean, zero): the identity shortcuts then carry zero, and cutting c
    from every writer, BatchNorm and reader must leave the logits as they are. A writer or
    reader missing from a stream, or one too many, breaks the shapes or the values."""
    model = _model(arch)
    streams = residual_streams(model)
    assert len(streams) == 3
    assert streams[-1].readers[-1] == "fc"
    x = _images()
    kept = {}
    for pair in streams:
        c = 1
        for producer, norm in zip(pair.producers, pair.norms, strict=True):
            layer, bn = get_layer(model, producer), get_layer(model, norm)
            layer.kernel.set_value(layer.kernel.get_value().at[..., c].set(0.0))
            bn.bias.set_value(bn.bias.get_value().at[c].set(0.0))
            bn.mean.set_value(bn.mean.get_value().at[c].set(0.0))
        width = get_layer(model, pair.consumer).in_features
        kept[pair.consumer] = np.delete(np.arange(width), c)
    logits = np.asarray(model(x))
    for pair in streams:
        shrink_pair(model, pair, kept[pair.consumer])
    np.testing.assert_allclose(np.asarray(model(x)), logits, rtol=1e-5, atol=1e-5)
    for pair in streams:
        for name in pair.consumers:
            assert get_layer(model, name).in_features == len(kept[pair.consumer])


def _least_squares(W, H, keep):
    """float64: the weights on ``keep`` minimising (W − V) H (W − V)ᵀ, zero elsewhere."""
    V = np.zeros_like(W)
    V[:, keep] = W @ H[:, keep] @ np.linalg.inv(H[np.ix_(keep, keep)])
    return V


def _damped(H, percdamp=0.01):
    return H + percdamp * np.mean(np.diag(H)) * np.eye(len(H))


def test_coupled_prune_is_greedy_least_squares_over_all_readers():
    """Two readers of C = 6 channels (one with 3 inputs a channel, as a conv's kernel
    positions; one with 1, as a head): every greedy step removes the channel whose exact
    least-squares re-fit raises Σ_j error_j / ‖W_j X_j‖² least (float64 brute force), and the
    readers end at the least-squares optimum of their kept inputs."""
    rng = np.random.default_rng(0)
    C, units = 6, (3, 1)
    Ws, Hs = [], []
    for rows, u, scale in zip((5, 4), units, (1.0, 30.0), strict=True):  # unlike energies
        X = rng.normal(size=(200, C * u)) @ rng.normal(size=(C * u, C * u))  # correlated
        Hs.append(2 * X.T @ X / len(X))
        Ws.append(scale * rng.normal(size=(rows, C * u)) * rng.uniform(0.2, 2.0, C * u))
    n_remove = 3
    W1s, removed = coupled_prune(tuple(jnp.asarray(w, jnp.float32) for w in Ws),
                                 tuple(jnp.asarray(h, jnp.float32) for h in Hs),
                                 jnp.int32(n_remove), units=units)
    removed = np.asarray(removed)
    Hd = [_damped(h) for h in Hs]
    energy = [np.sum((w @ h) * w) for w, h in zip(Ws, Hs, strict=True)]

    def loss(kept_channels):
        total = 0.0
        for w, h, u, e in zip(Ws, Hd, units, energy, strict=True):
            keep = (np.asarray(kept_channels)[:, None] * u + np.arange(u)).ravel()
            d = w - _least_squares(w, h, keep)
            total += np.sum((d @ h) * d) / e
        return total

    kept = list(range(C))
    for _ in range(n_remove):
        costs = {c: loss([k for k in kept if k != c]) for c in kept}
        kept.remove(min(costs, key=costs.get))
    assert sorted(np.flatnonzero(~removed)) == kept
    for w, h, u, w1 in zip(Ws, Hd, units, W1s, strict=True):
        keep = (np.asarray(kept)[:, None] * u + np.arange(u)).ravel()
        np.testing.assert_allclose(np.asarray(w1), _least_squares(w, h, keep), rtol=2e-3,
                                   atol=2e-3 * np.abs(w).max())

    _, removed_mag = coupled_prune(tuple(jnp.asarray(w, jnp.float32) for w in Ws),
                                   tuple(jnp.asarray(h, jnp.float32) for h in Hs),
                                   jnp.int32(n_remove), units=units, magnitude=True)
    score = sum((w**2).reshape(w.shape[0], C, u).sum((0, 2)) / np.sum(w**2)
                for w, u in zip(Ws, units, strict=True))
    assert set(np.flatnonzero(np.asarray(removed_mag))) == set(np.argsort(score)[:n_remove])


def test_stream_pruning_through_prune_model_restore_scale_and_the_specialist(tmp_path):
    """A bottleneck ResNet (conv2 is a consumer and a producer; each conv1 reads a stream and
    writes a pair): prune_model cuts every stream to half and the pairs, with less error than
    the channel-norm cut of the same streams; restore_scale (from ``kept_channels``) keeps the
    logits; the specialist on disk records the streams' readers and rebuilds the model
    exactly."""
    dense = _model("resnet50")
    x = _images(16)
    batches = [x[:8], x[8:]]
    config = sequential.PruneConfig(pattern="structured", sparsity=0.5, stream_sparsity=0.5,
                                    allocation="uniform")
    names = sequential.default_layers(dense, config)
    assert not any(p.consumer in names for p in residual_streams(dense))
    before = {n: np.asarray(get_layer(dense, n).kernel.get_value())
              for n in [*names, *(r for p in residual_streams(dense) for r in p.consumers)]
              if n != "fc"}
    errors = {}
    for method in ("auto", "magnitude"):
        model = nnx.clone(dense)
        result = sequential.prune_model(model, batches,
                                        dataclasses.replace(config, method=method))
        streams = [s for s in result.stats if s.pattern == "stream"]
        assert [s.name for s in streams] == [p.consumer for p in residual_streams(dense)]
        errors[method] = np.mean([s.rel_error for s in streams])
    assert errors["auto"] < 0.5 * errors["magnitude"]
    assert get_layer(model, "fc").in_features == 16 and get_layer(model, "conv1").out_features == 2
    logits = np.asarray(model(x))
    assert np.all(np.isfinite(logits))

    model = nnx.clone(dense)
    result = sequential.prune_model(model, batches, config)
    logits = np.asarray(model(x))
    kept_in, kept_out = kept_channels(cuts_by_consumer(model), result.kept)
    assert "layer1.0.conv2" in kept_in and "layer1.0.conv2" in kept_out  # both sides cut
    factors = batchnorm.restore_scale(model, before, kept_in, kept_out)
    assert "layer1.0.conv1" in factors and "layer2.1.conv1" in factors
    np.testing.assert_allclose(np.asarray(model(x)), logits, rtol=1e-3, atol=1e-3)

    path = save_specialist(tmp_path / "s", model, "resnet50", BOTTLENECK, list("abcd"), {})
    loaded, meta = load_specialist(path)
    cut = meta["cuts"]["layer1.1.conv1"]
    assert cut["readers"] == list(residual_streams(dense)[1].readers)
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))


def test_stream_sparsity_is_refused_where_it_does_not_apply():
    with pytest.raises(ValueError, match=r"stream_sparsity=0.5 needs pattern='structured'"):
        sequential.PruneConfig(pattern="unstructured", stream_sparsity=0.5)
    with pytest.raises(ValueError, match="sparsity"):
        sequential.PruneConfig(pattern="structured", stream_sparsity=1.5)
    vit = models.create("vit_mini", num_classes=4)
    assert residual_streams(vit) == [] and \
        list(cuts_by_consumer(vit).values()) == infer_pairs(vit)
    with pytest.raises(ValueError, match="needs a model with residual streams"):
        sequential.prune_model(vit, [_images(2)], sequential.PruneConfig(
            pattern="structured", sparsity=0.5, stream_sparsity=0.5, allocation="uniform"))


def test_the_speed_budget_times_the_streams_cut():
    model = _model("resnet_mini")
    pairs = cuts_by_consumer(model)
    names = [p.consumer for p in infer_pairs(model)]
    shaped = speed_budget.shaped_like(model, {n: 0.5 for n in names}, pairs, 0.5)
    assert get_layer(shaped, "conv1").out_features == 8
    assert get_layer(shaped, "fc").in_features == 32
    assert get_layer(shaped, "layer2.0.conv2").in_features == 16
    assert np.asarray(shaped(_images(2))).shape == (2, 4)
    assert get_layer(model, "fc").in_features == 64  # a copy


def test_aligned_levels_keep_whole_multiples_of_channels():
    from taco_jax.prune.patterns import aligned_level

    def kept(s, width, group=1, multiple=8):
        units = width // group
        return (units - int(np.floor(aligned_level(s, width, group, multiple) * units + 1e-6))) \
            * group

    assert [kept(s, 64) for s in (0.0, 0.3, 0.5, 0.6, 0.9, 0.95, 0.99)] == \
        [64, 48, 32, 24, 8, 8, 8]  # 44.8 -> 48, 25.6 -> 24, 6.4 -> 8, never below one step
    assert kept(0.5, 16) == 8 and kept(0.7, 16) == 8 and kept(0.2, 16) == 16
    assert kept(0.5, 20) == 8 and kept(0.1, 20) == 20 and kept(0.25, 20) == 16  # 18: a tie
    assert kept(0.5, 6) == 3  # narrower than one step: as the level says
    assert kept(0.5, 64, multiple=1) == 32 and kept(0.45, 64, multiple=1) == 36
    assert kept(0.5, 384, group=64) == 192  # whole heads are whole multiples already
    assert kept(0.3, 96, group=12) == 72   # 12-channel units: steps of 2 units (24 channels)
    with pytest.raises(ValueError, match="channel_multiple must be an integer >= 1"):
        sequential.PruneConfig(pattern="structured", channel_multiple=0)


def test_the_widths_benchmark_cuts_the_shapes_it_names():
    from taco_jax.bench.widths import cut

    model = _model("resnet_mini")
    out = cut(model, 0.5, [8, 8, 16])
    assert get_layer(out, "conv1").out_features == 8 and get_layer(out, "fc").in_features == 32
    assert [get_layer(out, p.consumer).in_features for p in infer_pairs(out)] == \
        [8, 8, 16, 32, 64, 64]
    assert np.asarray(out(_images(2))).shape == (2, 4)
