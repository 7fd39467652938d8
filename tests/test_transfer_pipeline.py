"""Task-oriented transfer end to end on a tiny teacher and the embedded data."""

import dataclasses

import numpy as np
import pytest
from flax import nnx

from taco_jax.methods import adapt, transfer
from taco_jax.train import fit


def _config(**kw):
    base = dict(student="resnet_mini", student_overrides={"widths": (4, 4, 8), "layers": (1, 1, 1)},
                shots=8, transfer_size=60,
                distill=fit.FitConfig(steps=6, batch_size=16, kd_weight=1.0, ce_weight=1.0),
                finetune=fit.FitConfig(steps=4, batch_size=8, kd_weight=1.0),
                baselines=("few_shot_only", "task_agnostic", "random_pool"), latency_batch=8)
    return transfer.TransferConfig(**{**base, **kw})


def test_transfer_report_sets_and_resume(tiny_task, tmp_path):
    model, data, pool = tiny_task
    pool = pool[:1500]
    data = dataclasses.replace(data, unlabelled_images=pool)
    out = transfer.compress(model, data, _config(), workdir=tmp_path)
    r = out.report

    teacher = adapt.restrict_head(nnx.clone(model), data.class_ids)
    assert r["dense"] == fit.evaluate(teacher, data.test_images, data.test_labels,
                                      data.preprocess)
    # The retrieved set: the asked size, distinct, never a copy of a labelled image.
    ids = np.asarray(r["transfer"]["ids"])
    assert len(ids) == 60 == len(set(ids.tolist())) and ids.max() < len(pool)
    shots = {data.train_images[i].tobytes() for i in r["task"]["few_shot_ids"]}
    assert not any(pool[i].tobytes() in shots for i in ids)
    # Retrieval ranks by the teacher's embedding: the retrieved images are closer to the
    # labelled ones than a random pool sample is (mean best cosine similarity).
    from taco_jax.methods import retrieval

    q = retrieval.embed(teacher, data.train_images[r["task"]["few_shot_ids"]], data.preprocess)
    e = retrieval.embed(teacher, pool, data.preprocess)
    rand = np.random.default_rng(0).choice(len(pool), 60, replace=False)
    assert (q @ e[ids].T).max(0).mean() > (q @ e[rand].T).max(0).mean()
    # The random-pool baseline's subset: the same size, distinct, never a labelled image.
    rids = np.asarray(r["transfer"]["random_ids"])
    assert len(rids) == 60 == len(set(rids.tolist())) and rids.max() < len(pool)
    assert not any(pool[i].tobytes() in shots for i in rids)
    # The pool's size is the whole pool's; the candidates are it less its copies of the shots.
    copies = sum(pool[i].tobytes() in shots for i in range(len(pool)))
    assert copies > 0  # the tiny pool holds some of the labelled images
    assert r["transfer"]["pool"] == len(pool)
    assert r["transfer"]["pool_candidates"] == len(pool) - copies

    assert r["cost"]["student"]["params"] < r["cost"]["teacher"]["params"] / 3
    assert r["compressed"]["n"] == len(data.test_labels)
    assert set(r["baselines"]) == {"few_shot_only", "task_agnostic", "random_pool"}
    assert out.model.fc.kernel.value.shape == (8, 3) and out.masks == {}

    again = transfer.compress(model, data, _config(), workdir=tmp_path)  # all restored
    assert again.report["compressed"] == r["compressed"]
    assert again.report["baselines"] == r["baselines"]
    assert again.report["transfer"] == r["transfer"]


def test_bad_configs_are_named():
    with pytest.raises(ValueError, match="transfer_set"):
        _config(transfer_set="web")
    with pytest.raises(ValueError, match="unknown student model 'resnet9000'"):
        _config(student="resnet9000")
    with pytest.raises(ValueError, match="unknown baselines"):
        _config(baselines=("magic",))
    with pytest.raises(ValueError, match="kd_weight > 0"):
        _config(distill=fit.FitConfig(kd_weight=0.0))


def test_student_must_take_the_teachers_input_size_and_channels(tiny_task):
    model, data, pool = tiny_task
    cfg = _config(student="resnet18", student_overrides={}, baselines=())
    with pytest.raises(ValueError, match="student 'resnet18' takes 224 px, 3 channels; the "
                       "teacher 28 px, 1 channels: set student_overrides"):
        transfer.compress(model, dataclasses.replace(data, unlabelled_images=pool[:200]), cfg)


def test_pool_subset_and_composition():
    from taco_jax.data import pool

    labels = np.repeat(np.arange(4), [10, 20, 30, 40])
    names, task = ["a", "b", "c", "d"], ["b", "d"]
    np.testing.assert_array_equal(pool.pool_subset(labels, names, task, 1.0),
                                  np.arange(100))
    np.testing.assert_array_equal(pool.pool_subset(labels, names, task, 0.0),
                                  np.flatnonzero((labels == 0) | (labels == 2)))
    kept = pool.pool_subset(labels, names, task, 0.25)
    np.testing.assert_array_equal(np.bincount(labels[kept], minlength=4), [10, 5, 30, 10])
    assert len(set(kept.tolist())) == len(kept)
    np.testing.assert_array_equal(kept, pool.pool_subset(labels, names, task, 0.25))

    c = pool.composition(np.array([10, 30, 31, 99]), labels, names, task)
    assert c == {"images": 4, "task_class_fraction": 0.5,
                 "per_class": {"b": 1, "c": 2, "d": 1}}


def test_compress_needs_a_pool(tiny_task):
    model, data, _ = tiny_task
    with pytest.raises(ValueError, match="unlabelled_images is None"):
        transfer.compress(model, data, _config())
