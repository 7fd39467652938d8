"""TACO end to end on a tiny model and the embedded data: structure, masks held, report."""

import dataclasses

import numpy as np
import pytest
from flax import nnx

from taco_jax import models
from taco_jax.methods import adapt, retrieval, taco
from taco_jax.prune import sequential
from taco_jax.train import fit


@pytest.fixture(scope="module")
def setup(tiny_task):
    model, data, _ = tiny_task
    return model, data


def test_compress_holds_masks_and_reports(setup, monkeypatch):
    model, data = setup
    # Without onnxruntime the report says so (its timing is tested in test_structured.py).
    monkeypatch.setattr(taco.onnx_export, "available", lambda: False)
    config = taco.TacoConfig(
        shots=16, prune=sequential.PruneConfig(pattern="unstructured", sparsity=0.75),
        recover=fit.FitConfig(steps=30, batch_size=16, kd_weight=1.0, ce_weight=0.0),
        baselines=("magnitude",), schedule=())
    before = nnx.state(model, nnx.Param)
    out = taco.compress(model, data, config)
    r = out.report

    # The input model is untouched (still 20 classes), the result has the task's 3 outputs.
    assert model.fc.kernel.value.shape[1] == 20
    assert out.model.fc.kernel.value.shape[1] == 3
    for a, b in zip(before.flat_state(), nnx.state(model, nnx.Param).flat_state(), strict=True):
        np.testing.assert_array_equal(np.asarray(a[1].value), np.asarray(b[1].value))

    # Dense accuracy is the head-restricted generalist's, evaluated independently here.
    teacher = adapt.restrict_head(nnx.clone(model), data.class_ids)
    assert r["dense"] == fit.evaluate(teacher, data.test_images, data.test_labels,
                                      data.preprocess)
    # Masks survive recovery: every pruned layer's weights are zero exactly where masked.
    assert set(out.masks) == set(sequential.default_layers(out.model, config.prune))
    for name, mask in out.masks.items():
        kernel = np.asarray(models.get_layer(out.model, name).kernel.value)
        assert np.all(kernel[~mask] == 0), name
    s = r["sparsity"]["pruned_layers"]
    assert 0.74 <= s["sparsity"] <= 0.76 and s["compression"] == pytest.approx(4, rel=0.05)
    assert len(r["task"]["few_shot_ids"]) == 16 * 3
    assert {"magnitude"} == set(r["baselines"])
    assert all(x["rel_error"] >= 0 for x in r["layers"])
    # Timed as deployed; a conv net has no non-head Linear for the sparse kernels to take.
    assert r["latency_paths"] == {}
    assert r["speed"]["onnxruntime-cpu"] == {
        "skipped": "pip install 'taco-jax[onnx]' to measure it"}
    speed = r["speed"]["xla-cpu"]
    assert set(speed) == {"batch_1", f"batch_{config.latency_batch}"}
    assert speed["batch_1"]["batch"] == 1 and set(speed["batch_1"]) >= {"taco", "rounds"}


def test_data_free_magnitude_baselines_take_their_own_layer_levels(setup):
    """magnitude_uniform prunes every layer to the target; magnitude_gmp to the levels of one
    |w| threshold over the teacher's prunable layers (numpy quantile over their kernels)."""
    model, data = setup
    config = taco.TacoConfig(
        shots=8, prune=sequential.PruneConfig(sparsity=0.75, allocation="global"),
        recover=fit.FitConfig(steps=4, batch_size=8, kd_weight=1.0, ce_weight=0.0),
        baselines=("magnitude_uniform", "magnitude_gmp"), latency_batch=0, schedule=())
    r = taco.compress(model, data, config).report
    teacher = adapt.restrict_head(nnx.clone(model), data.class_ids)
    names = sequential.default_layers(teacher, config.prune)
    kernels = {n: np.abs(np.asarray(models.get_layer(teacher, n).kernel.value)) for n in names}
    flat = np.sort(np.concatenate([k.ravel() for k in kernels.values()]))
    threshold = flat[int(0.75 * len(flat)) - 1]
    uniform, gmp = (r["baselines"][b] for b in ("magnitude_uniform", "magnitude_gmp"))
    assert (uniform["allocation"], gmp["allocation"]) == ("uniform", "magnitude")
    for n, k in kernels.items():
        assert uniform["sparsity"]["per_layer"][n]["sparsity"] == pytest.approx(0.75, abs=0.01)
        assert gmp["sparsity"]["per_layer"][n]["sparsity"] == pytest.approx(
            np.mean(k <= threshold), abs=1.5 / k.size)
    levels = [gmp["sparsity"]["per_layer"][n]["sparsity"] for n in names]
    assert max(levels) - min(levels) > 0.1  # one threshold, unequal layer levels
    assert gmp["sparsity"]["pruned_layers"]["sparsity"] == pytest.approx(0.75, abs=0.002)


def test_linear_probe_teacher_for_classes_the_model_does_not_have(setup):
    """Without class ids the task teacher is the generalist with a new head fit on the few-shot
    images' features; it is what the report's dense accuracy measures and what is pruned."""
    model, data = setup
    data = dataclasses.replace(data, class_ids=None)
    config = taco.TacoConfig(
        shots=8, prune=sequential.PruneConfig(sparsity=0.5),
        recover=fit.FitConfig(steps=2, batch_size=8, kd_weight=1.0, ce_weight=0.0),
        baselines=(), latency_batch=0, adapt="linear_probe", schedule=())
    out = taco.compress(model, data, config)
    r = out.report
    assert r["adapt"]["method"] == "linear_probe" and r["adapt"]["grad_norm"] < 1e-3
    assert r["adapt"]["l2"] in adapt.L2_GRID and len(r["adapt"]["cv_loss"]) == len(adapt.L2_GRID)
    assert r["task"]["source_class_ids"] is None
    ids = np.asarray(r["task"]["few_shot_ids"])
    teacher, _ = adapt.linear_probe(nnx.clone(model), data.train_images[ids],
                                    data.train_labels[ids], 3, data.preprocess)
    assert r["dense"] == fit.evaluate(teacher, data.test_images, data.test_labels,
                                      data.preprocess)
    assert r["dense"]["top1"] > 50  # 3 classes (chance 33%), 8 shots each, a weak tiny model
    assert out.model.fc.kernel.value.shape == (model.fc.kernel.value.shape[0], 3)
    with pytest.raises(ValueError, match=r"adapt='restrict' needs TaskData\.class_ids"):
        taco.compress(model, data, dataclasses.replace(config, adapt="restrict"))


def test_recovery_pool_reaches_every_kd_recovery_and_the_report(setup, monkeypatch):
    """The unlabelled pool (here: the 20 of 40 images nearest to the few-shot set) goes to
    TACO's and magnitude's recoveries (every schedule step), not to the CE-only dense
    fine-tune, and the report says what the recovery trained on."""
    model, data = setup
    pool = data.train_images[-40:]
    calls = []
    real_fit = fit.fit

    def spy(*args, unlabelled=None, desc="", **kwargs):
        calls.append((desc, unlabelled))
        return real_fit(*args, unlabelled=unlabelled, desc=desc, **kwargs)

    monkeypatch.setattr(fit, "fit", spy)
    config = taco.TacoConfig(
        shots=4, prune=sequential.PruneConfig(pattern="unstructured", sparsity=0.75),
        recover=fit.FitConfig(steps=3, batch_size=8, kd_weight=1.0, unlabelled_share=0.25),
        schedule=(0.5,), schedule_steps=2, latency_batch=0, pool_retrieve=20,
        baselines=("magnitude", "dense_finetune"))
    r = taco.compress(model, dataclasses.replace(data, unlabelled_images=pool), config).report
    assert [d for d, _ in calls] == ["taco recover_1", "taco recover_2", "magnitude recover_1",
                                     "magnitude recover_2", "dense finetune"]
    teacher = adapt.restrict_head(nnx.clone(model), data.class_ids)
    shots = data.train_images[r["task"]["few_shot_ids"]]
    ids = retrieval.nearest_pool(teacher, shots, pool, 20, data.preprocess)
    for _, u in calls[:4]:
        np.testing.assert_array_equal(u, pool[ids])
    assert calls[4][1] is None
    assert r["recovery_data"] == {"labelled": 12, "unlabelled": 20, "unlabelled_share": 0.25,
                                  "pool_ids": ids.tolist()}


def _tree(model):
    return [np.asarray(v.value) for _, v in nnx.state(model).flat_state()]


@pytest.mark.slow
def test_gradual_run_resumes_from_its_stages_with_the_same_result(setup, tmp_path):
    """Kill-and-rerun: drop the later stages' records (as if preempted there) and rerun."""
    model, data = setup
    config = taco.TacoConfig(
        shots=8, schedule=(0.5,), schedule_steps=5,
        prune=sequential.PruneConfig(pattern="2:4", sparsity=0.75),
        recover=fit.FitConfig(steps=8, batch_size=8, kd_weight=1.0, ce_weight=0.5),
        baselines=("magnitude",), latency_batch=4)
    full = taco.compress(model, data, config, workdir=tmp_path)
    r = full.report
    assert [h["sparsity"] for h in r["schedule"]] == [0.5, 0.75]
    assert [h["sparsity"] for h in r["baselines"]["magnitude"]["schedule"]] == [0.5, 0.75]
    assert r["size"]["macs"]["compressed"] < r["size"]["macs"]["dense"]
    assert r["size"]["params"]["compressed"] == r["size"]["params"]["dense"]  # masks, no cuts
    assert r["speed"]["xla-cpu"]["batch_4"]["taco"]["seconds"] > 0
    for name, mask in full.masks.items():  # 2:4 after the 50% step: exactly 2 of every 4 kept
        kernel = np.asarray(models.get_layer(full.model, name).kernel.value)
        assert np.all(kernel[~mask] == 0), name
    stages_dir = tmp_path / "stages"
    for stage in ("taco_recover_2", "magnitude_prune_2", "magnitude_recover_2"):
        (stages_dir / stage / "info.json").unlink()
    again = taco.compress(model, data, config, workdir=tmp_path)
    assert again.report["compressed"] == r["compressed"]
    assert again.report["baselines"]["magnitude"]["compressed"] == \
        r["baselines"]["magnitude"]["compressed"]
    for a, b in zip(_tree(full.model), _tree(again.model), strict=True):
        np.testing.assert_array_equal(a, b)


def test_taco_config_rejects_bad_schedule():
    with pytest.raises(ValueError, match=r"schedule=\(0.5, 0.95\) must increase"):
        taco.TacoConfig(schedule=(0.5, 0.95), prune=sequential.PruneConfig(sparsity=0.9))


def test_taco_config_rejects_unknown_adapt():
    with pytest.raises(ValueError, match=r"adapt must be one of .* got 'probe'"):
        taco.TacoConfig(adapt="probe")


def test_taco_config_rejects_unknown_baseline():
    with pytest.raises(ValueError, match=r"unknown baselines \['random'\]"):
        dataclasses.replace(taco.TacoConfig(), baselines=("random",))


def test_task_agnostic_baseline_differs_from_taco_only_in_its_calibration_images(setup):
    """Calibrated on the few-shot images themselves it is TACO, bit for bit; on other images
    its masks differ; without generic images the report says it was skipped."""
    model, data = setup
    config = taco.TacoConfig(
        shots=8, prune=sequential.PruneConfig(sparsity=0.8, allocation="global"),
        recover=fit.FitConfig(steps=3, batch_size=8, kd_weight=1.0, ce_weight=0.0),
        baselines=("task_agnostic",), latency_batch=0, schedule=())
    ids = taco.few_shot_indices(data.train_labels, 8, 0)
    same = taco.compress(model, dataclasses.replace(data, generic_images=data.train_images[ids]),
                         config).report
    row = same["baselines"]["task_agnostic"]
    assert row["calibration_images"] == 24 and row["compressed"] == same["compressed"]
    assert row["sparsity"] == same["sparsity"]

    others = np.setdiff1d(np.arange(len(data.train_labels)), ids)[:100]
    other = taco.compress(model, dataclasses.replace(data,
                                                     generic_images=data.train_images[others]),
                          config).report
    a, b = other["sparsity"]["per_layer"], other["baselines"]["task_agnostic"]["sparsity"]
    assert a.keys() == b["per_layer"].keys() and a != b["per_layer"]  # other Hessians, levels
    assert other["baselines"]["task_agnostic"]["calibration_images"] == 24

    skipped = taco.compress(model, data, config).report["baselines"]["task_agnostic"]
    assert skipped == {"skipped": "no generic images to calibrate on"}
