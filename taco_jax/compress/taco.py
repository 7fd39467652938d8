"""TACO: few-shot task-aware compression (DESIGN.md §1–§3).

``compress(model, task_data, config)`` runs: adapt (restrict the classifier to the task's classes:
the dense task teacher) → few-shot calibration sample → sequential second-order pruning on the
task samples → recovery by knowledge distillation from the teacher, masks held exactly →
evaluation; and, on the same data and budget, the baselines (magnitude pruning with the same
recovery; the dense teacher fine-tuned on the few-shot set).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import numpy as np
from absl import logging
from flax import nnx

from taco_jax.compress import adapt, sparsity_report
from taco_jax.data.task import few_shot_indices
from taco_jax.prune import sequential
from taco_jax.train import fit

BASELINES = ("magnitude", "dense_finetune")


@dataclasses.dataclass(frozen=True)
class TaskData:
    """A task's arrays. ``class_ids`` (K,): the source classifier row of each task label."""

    train_images: np.ndarray  # (N, H, W, C) uint8, the pool the few-shot sample is drawn from
    train_labels: np.ndarray  # (N,) int in [0, K)
    test_images: np.ndarray
    test_labels: np.ndarray
    class_ids: np.ndarray
    class_names: tuple[str, ...]
    preprocess: Callable


@dataclasses.dataclass(frozen=True)
class TacoConfig:
    """What to compress and how. ``prune.method`` is the solver ("sparsegpt" by default)."""

    shots: int = 32
    seed: int = 0
    prune: sequential.PruneConfig = dataclasses.field(default_factory=sequential.PruneConfig)
    recover: fit.FitConfig = dataclasses.field(default_factory=fit.FitConfig)
    baselines: tuple[str, ...] = BASELINES
    calibration_batch: int = 64

    def __post_init__(self):
        bad = [b for b in self.baselines if b not in BASELINES]
        if bad:
            raise ValueError(f"unknown baselines {bad}; allowed: {BASELINES}")
        if self.shots < 1 or self.calibration_batch < 1:
            raise ValueError(f"shots and calibration_batch must be >= 1, got {self.shots}, "
                             f"{self.calibration_batch}")


@dataclasses.dataclass
class CompressedModel:
    """The compressed task model, its pruning masks (layer name -> bool kernel mask), report."""

    model: nnx.Module
    masks: dict[str, np.ndarray]
    report: dict


def _stage(name: str):
    logging.info("=" * 20 + " %s " + "=" * 20, name)
    return time.perf_counter()


def _prune_and_recover(teacher, calib_x, calib_y, data, config, method, timings, tag):
    student = nnx.clone(teacher)
    batches = [calib_x[i:i + config.calibration_batch]
               for i in range(0, len(calib_x), config.calibration_batch)]
    prune_config = dataclasses.replace(config.prune, method=method)
    t = _stage(f"{tag}: prune ({method}, {prune_config.pattern} at {prune_config.sparsity:.0%})")
    result = sequential.prune_model(student, [data.preprocess(b) for b in batches], prune_config)
    timings[f"{tag}_prune"] = time.perf_counter() - t
    pruned_acc = fit.evaluate(student, data.test_images, data.test_labels, data.preprocess)
    logging.info("%s after pruning, before recovery: top-1 %.2f%%", tag, pruned_acc["top1"])

    t = _stage(f"{tag}: recover (KD from the dense task teacher, masks fixed)")
    fit.fit(student, calib_x, calib_y, config.recover, data.preprocess, teacher=teacher,
            constrain=lambda m: sequential.apply_masks(m, result.masks), desc=f"{tag} recover")
    timings[f"{tag}_recover"] = time.perf_counter() - t
    acc = fit.evaluate(student, data.test_images, data.test_labels, data.preprocess)
    logging.info("%s after recovery: top-1 %.2f%%", tag, acc["top1"])
    return student, result, {"pruned": pruned_acc, "recovered": acc}


def compress(model: nnx.Module, data: TaskData, config: TacoConfig) -> CompressedModel:
    """Compress a generalist ``model`` for the task ``data`` (the input model is not modified)."""
    timings: dict[str, float] = {}
    t = _stage("adapt: restrict the classifier to the task's classes")
    teacher = adapt.restrict_head(nnx.clone(model), data.class_ids)
    dense = fit.evaluate(teacher, data.test_images, data.test_labels, data.preprocess)
    timings["adapt"] = time.perf_counter() - t
    logging.info("dense task teacher: top-1 %.2f%% on %d test images", dense["top1"], dense["n"])

    ids = few_shot_indices(data.train_labels, config.shots, config.seed)
    calib_x, calib_y = data.train_images[ids], data.train_labels[ids]
    logging.info("few-shot set: %d images (%d per class, seed %d)", len(ids), config.shots,
                 config.seed)

    student, result, acc = _prune_and_recover(teacher, calib_x, calib_y, data, config,
                                              config.prune.method, timings, "taco")
    report = {
        "task": {"classes": list(data.class_names), "source_class_ids": data.class_ids.tolist(),
                 "shots": config.shots, "few_shot_ids": ids.tolist(),
                 "test_images": len(data.test_labels)},
        "dense": dense,
        "compressed": acc["recovered"],
        "compressed_before_recovery": acc["pruned"],
        "sparsity": sparsity_report.summarize(student, result.masks),
        "layers": [dataclasses.asdict(s) for s in result.stats],
        "baselines": {},
    }
    if "magnitude" in config.baselines:
        _, _, mag = _prune_and_recover(teacher, calib_x, calib_y, data, config, "magnitude",
                                       timings, "magnitude")
        report["baselines"]["magnitude"] = {"compressed": mag["recovered"],
                                            "before_recovery": mag["pruned"]}
    if "dense_finetune" in config.baselines:
        t = _stage("baseline: dense teacher fine-tuned on the few-shot set")
        tuned = nnx.clone(teacher)
        fit.fit(tuned, calib_x, calib_y, dataclasses.replace(config.recover, kd_weight=0.0,
                ce_weight=1.0), data.preprocess, desc="dense finetune")
        report["baselines"]["dense_finetune"] = fit.evaluate(
            tuned, data.test_images, data.test_labels, data.preprocess)
        timings["dense_finetune"] = time.perf_counter() - t
    report["seconds"] = timings
    return CompressedModel(model=student, masks=result.masks, report=report)
