"""TACO: few-shot task-aware compression (BUILD_NOTES.md, Design).

``compress(model, task_data, config)`` runs: few-shot sample → adapt (restrict the classifier to
the task's classes, or linear-probe a new one on the few-shot images: the dense task teacher) →
sequential second-order pruning on the task samples → recovery by knowledge distillation from
the teacher, masks held exactly → evaluation; and, on the same data and budget, the baselines
(magnitude pruning with the same schedule and recovery, its per-layer levels from TACO's
allocation rule or the classical data-free ones; the dense teacher fine-tuned on the few-shot
set).

With a ``workdir`` every stage checkpoints its result (``stages.StageStore``; the solver also
checkpoints after every layer group), so a rerun after preemption resumes where it stopped and
gives the same final result.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from taco_jax import distributed, export, stages
from taco_jax.data.task import TaskData, calibration_batches, few_shot_indices
from taco_jax.export import onnx as onnx_export
from taco_jax.methods import adapt, dcvit, retrieval
from taco_jax.methods.result import CompressedModel
from taco_jax.models import paths
from taco_jax.models.latency import speedups
from taco_jax.models.shrink import (
    batchnorm_after,
    cuts_by_consumer,
    kept_channels,
    residual_streams,
    shrink_pair,
)
from taco_jax.models.vit import VisionTransformer
from taco_jax.prune import patterns, sequential, speed_budget
from taco_jax.report import compression
from taco_jax.train import batchnorm, fit

# Magnitude pruning (no compensation, no data in the mask) with the same schedule and recovery,
# name -> its per-layer levels: None = TACO's allocation rule (``prune.allocation``) applied to
# magnitude pruning's own error curves on the task images (near TACO's levels at 90%
# unstructured, far from them at 16x16 blocks: this isolates the solver's weights), "uniform" =
# every layer at the target (SparseGPT's baseline), "magnitude" = one |w| threshold over all
# layers (global magnitude pruning, GMP). The last two are data-free.
MAGNITUDE_BASELINES = {"magnitude": None, "magnitude_uniform": "uniform",
                       "magnitude_gmp": "magnitude"}
BASELINES = (*MAGNITUDE_BASELINES, "dense_finetune", "task_agnostic", "unstructured", "dcvit")
DEFAULT_BASELINES = ("magnitude", "magnitude_gmp", "dense_finetune", "task_agnostic")
# Structured: channel-norm pruning at uniform widths (Torch-Pruning's default) instead of GMP (a
# global |w| threshold is for masks; whole channels of different layers do not compare),
# unstructured TACO with as many non-zeros as the structured specialist has (what the same
# compression buys as zeros, at its measured speed) and, for a ViT, DC-ViT's cut at the
# specialist's MACs (the last two: structured runs only; "auto" drops "dcvit" for other models).
STRUCTURED_BASELINES = ("magnitude", "magnitude_uniform", "unstructured", "dcvit",
                        "dense_finetune", "task_agnostic")
BASELINE_LABELS = {"magnitude": "magnitude, TACO's layer allocation",
                   "magnitude_uniform": "magnitude, uniform layer levels",
                   "magnitude_gmp": "global magnitude pruning (GMP)",
                   "dense_finetune": "dense model fine-tuned on the few shots",
                   "task_agnostic": "TACO calibrated on generic images",
                   "unstructured": "TACO unstructured, as many non-zeros",
                   "dcvit": "DC-ViT, as many MACs"}


# The intermediate sparsities of ``schedule="auto"`` (those below the target; BUILD_NOTES.md).
GRADUAL_LEVELS = (0.5, 0.75)


def default_prune() -> sequential.PruneConfig:
    """TACO's prune: 90% unstructured, per-layer levels from the error curves ("auto"), the
    input layer dense (as in the OBC/SparseGPT CNN recipes: at 50% alone resnet_mini's 3x3x1
    stem costs 54 points of task accuracy)."""
    return sequential.PruneConfig(sparsity=0.9, allocation="auto", overrides={"stem": 0.0})


def default_recover() -> fit.FitConfig:
    """TACO's recovery: KD from the dense task teacher (T = 4) with half-weight CE on the few
    shots, shifts and flips; ``steps`` is the whole budget (the schedule's levels included)."""
    return fit.FitConfig(steps=400, batch_size=64, learning_rate=1e-3, weight_decay=0.0,
                         kd_weight=1.0, ce_weight=0.5, temperature=4.0, augment="shift_flip")


@dataclasses.dataclass(frozen=True)
class TacoConfig:
    """What to compress and how; the defaults are the launcher's (``configs/taco/demo.py``,
    ``tests/test_config_overrides.py`` holds them equal). ``prune.method`` is the solver.

    ``schedule``: gradual pruning, intermediate sparsities (increasing, below
    ``prune.sparsity``), or "auto": the ``schedule_levels`` below the target (none for an N:M
    pattern, whose one level is fixed, nor for a structured one, whose cuts change the shapes
    each level would be counted against). After each, ``schedule_steps`` steps of the same KD
    recovery, and the next step is solved on the recovered model; the final step prunes to
    ``prune.sparsity`` and is recovered for what is left of ``recover.steps``, the whole
    recovery budget (``levels()``, ``final_recover_steps()``). Magnitude gets the same
    schedule and budget.
    ``reestimate_bn``: after each prune, set BatchNorm running statistics to those of the
    few-shot images through the pruned model (``train.batchnorm``; both methods).
    ``restore_scale``: after each prune, scale the compensated weights of every conv that
    feeds a BatchNorm back to their dense norm, the factor folded into the BatchNorm (the
    function is unchanged; ``batchnorm.restore_scale``): the compensation's 2–4x larger
    weights slow the recovery's Adam (BUILD_NOTES: 16×16 tiles at 90%, 77.2 → 86.7). A no-op
    for magnitude pruning and models without BatchNorm.
    ``calibration_views``: views of each few-shot image in the solver's calibration set (the
    image, then augmented copies: ``recover.augment``).
    ``latency_batch``: batch size of the measured dense vs compressed latency (0: not measured).
    The compressed model is timed as deployed, through ``export.with_sparse_kernels`` (the
    report's ``latency_paths`` says which layers ran a sparse kernel on this device).
    ``pool_retrieve``: with ``TaskData.unlabelled_images``, recover on only the N of them
    nearest to the few-shot set in the teacher's embedding (``retrieval.nearest_pool``, the
    transfer method's retrieval); 0 keeps them all.
    ``adapt``: how the dense task teacher is made (``adapt.task_teacher``): "restrict" (the
    generalist's classifier rows of ``TaskData.class_ids``), "linear_probe" (a new classifier
    fit on the frozen features of the few-shot images, L2 weight ``probe_l2``, 0 = chosen by
    cross-validation on them; any task), or "auto": restrict when ``TaskData.class_ids`` is
    known, else probe.
    ``baselines``: names of ``BASELINES``, or "auto": ``DEFAULT_BASELINES``, and for a structured
    pattern ``STRUCTURED_BASELINES`` (``resolved_baselines``).
    ``prune.target_speedup`` (structured): the ``prune.sparsity`` actually used is the level
    measured that much faster than dense at ``latency_batch`` (``prune.speed_budget``; a stage of
    the run), in place of the configured one.
    """

    shots: int = 32
    seed: int = 0
    prune: sequential.PruneConfig = dataclasses.field(default_factory=default_prune)
    recover: fit.FitConfig = dataclasses.field(default_factory=default_recover)
    baselines: tuple[str, ...] | str = "auto"
    calibration_batch: int = 64
    schedule: tuple[float, ...] | str = "auto"
    schedule_levels: tuple[float, ...] = GRADUAL_LEVELS
    schedule_steps: int = 100
    reestimate_bn: bool = True
    restore_scale: bool = True
    latency_batch: int = 64
    calibration_views: int = 1
    pool_retrieve: int = 0
    adapt: str = "auto"
    probe_l2: float = 0.0

    def __post_init__(self):
        adapt.validate(self.adapt)
        if self.probe_l2 < 0:
            raise ValueError(f"probe_l2 must be > 0, or 0 to cross-validate it, got "
                             f"{self.probe_l2}")
        if isinstance(self.baselines, str) and self.baselines != "auto":
            raise ValueError(f"baselines={self.baselines!r}; expected 'auto' or a tuple of "
                             f"{BASELINES}")
        bad = [b for b in self.resolved_baselines() if b not in BASELINES]
        if bad:
            raise ValueError(f"unknown baselines {bad}; allowed: {BASELINES}")
        structured = self.prune.structured
        if structured and "magnitude_gmp" in self.resolved_baselines():
            raise ValueError("baseline magnitude_gmp (one |w| threshold over all layers) is for "
                             f"masked patterns, not {self.prune.pattern!r}; structured runs "
                             f"compare with magnitude_uniform (baselines='auto': "
                             f"{STRUCTURED_BASELINES})")
        if structured and self.schedule not in ("auto", ()):
            raise ValueError(f"schedule={self.schedule}: structured cuts change the shapes each "
                             "level counts against, so structured pruning is one-shot; use "
                             "'auto' or ()")
        for name, what in (("unstructured", "TACO unstructured at the structured specialist's "
                                             "non-zeros"),
                           ("dcvit", "DC-ViT's cut at the structured specialist's MACs")):
            if not structured and name in self.resolved_baselines():
                raise ValueError(f"baseline {name} ({what}) is for pattern='structured', not "
                                 f"{self.prune.pattern!r}")
        if self.prune.target_speedup and not self.latency_batch:
            raise ValueError("prune.target_speedup is measured at latency_batch, which is 0")
        if self.shots < 1 or self.calibration_batch < 1:
            raise ValueError(f"shots and calibration_batch must be >= 1, got {self.shots}, "
                             f"{self.calibration_batch}")
        bad = [x for x in self.schedule_levels if isinstance(x, bool)
               or not isinstance(x, int | float) or not 0 < x < 1]
        if bad:
            raise ValueError(f"schedule_levels has {bad}; expected sparsities in (0, 1)")
        if isinstance(self.schedule, str) and self.schedule != "auto":
            raise ValueError(f"schedule={self.schedule!r}; expected 'auto' or a tuple of "
                             "increasing sparsities below prune.sparsity")
        nm = isinstance(patterns.parse_pattern(self.prune.pattern), patterns.NM)
        if nm and self.schedule not in ("auto", ()):
            raise ValueError(f"schedule={self.schedule}: an N:M pattern ({self.prune.pattern}) "
                             "has one fixed level, nothing to prune gradually toward; use "
                             "'auto' or ()")
        levels = self.levels()
        if (any(isinstance(x, bool) or not isinstance(x, int | float) for x in levels)
                or levels[0] <= 0 or any(b <= a for a, b in itertools.pairwise(levels))):
            raise ValueError(f"schedule={self.schedule} must increase from > 0 to below the "
                             f"target prune.sparsity={self.prune.sparsity} (or be 'auto': "
                             "the schedule_levels below the target)")
        if len(levels) > 1 and self.schedule_steps < 1:
            raise ValueError(f"schedule_steps={self.schedule_steps}; the schedule "
                             f"{levels[:-1]} needs >= 1 recovery steps after each level")
        if self.final_recover_steps() < 1:
            raise ValueError(f"recover.steps={self.recover.steps} is the whole recovery budget; "
                             f"the schedule {levels[:-1]} takes {len(levels) - 1} x "
                             f"schedule_steps={self.schedule_steps} of it, leaving "
                             f"{self.final_recover_steps()} for the final step (needs >= 1)")
        if self.calibration_views < 1:
            raise ValueError(f"calibration_views must be >= 1, got {self.calibration_views}")
        if self.calibration_views > 1 and self.recover.augment == "none":
            raise ValueError(f"calibration_views={self.calibration_views} needs an augmentation "
                             "to make the views from (recover.augment is 'none')")
        if self.latency_batch < 0 or self.pool_retrieve < 0:
            raise ValueError("latency_batch and pool_retrieve must be >= 0, got "
                             f"{self.latency_batch}, {self.pool_retrieve}")

    def levels(self) -> tuple[float, ...]:
        """Every pruning step's total sparsity: the schedule ("auto" resolved), then the target."""
        target = self.prune.sparsity
        if self.schedule == "auto":
            fixed = isinstance(patterns.parse_pattern(self.prune.pattern),
                               patterns.NM | patterns.Structured)
            below = () if fixed else tuple(sorted({float(x) for x in self.schedule_levels
                                                if x < target}))
        else:
            below = tuple(self.schedule)
        return (*below, target)

    def resolved_baselines(self) -> tuple[str, ...]:
        """``baselines`` with "auto" resolved by the pattern."""
        if self.baselines != "auto":
            return tuple(self.baselines)
        return STRUCTURED_BASELINES if self.prune.structured else DEFAULT_BASELINES

    def final_recover_steps(self) -> int:
        """The final step's recovery: what ``recover.steps`` leaves after the schedule's."""
        return self.recover.steps - (len(self.levels()) - 1) * self.schedule_steps


def _banner(name: str) -> float:
    logging.info("=" * 20 + " %s " + "=" * 20, name)
    return time.perf_counter()


def _replay_cuts(model: nnx.Module, kept: dict[str, list[int]], config: TacoConfig) -> None:
    """Apply a finished structured stage's channel cuts, so its checkpoint's shapes fit."""
    pairs = cuts_by_consumer(model, config.prune.pairs)
    for name, channels in kept.items():
        shrink_pair(model, pairs[name], np.asarray(channels))


def layers_to_prune(model: nnx.Module, config: sequential.PruneConfig) -> list[str]:
    """The solver's default layers minus those an override keeps dense (sparsity 0): they are
    not pruned, so they take no part in the global allocation nor in the pruned-layer counts."""
    def dense(spec) -> bool:
        return (spec[1] if isinstance(spec, tuple) else spec) == 0

    overrides = paths.resolve_stem(model, dict(config.overrides))
    return [n for n in sequential.default_layers(model, config)
            if not dense(overrides.get(n, config.sparsity))]


def _calibration_batches(calib_x: np.ndarray, data: TaskData, config: TacoConfig) -> list:
    """The solver's calibration batches: the few-shot images and ``calibration_views - 1``
    copies under the recovery's augmentation; each batch this process's share."""
    return calibration_batches(calib_x, data.preprocess, config.calibration_batch,
                               views=config.calibration_views, augment=config.recover.augment,
                               seed=config.seed, process_share=True)


def _as_many_nonzeros(teacher, size, calib_x, calib_y, data, config, store, timings,
                      image_shape) -> tuple[dict, nnx.Module]:
    """The "unstructured" baseline of a structured run: TACO's unstructured prune of the
    teacher (its method, allocation, schedule and recovery) at the level that leaves as many
    non-zero parameters as the structured specialist has (``size``: its report's, from
    ``compression.size``): (report row, its model)."""
    prune = dataclasses.replace(config.prune, pattern="unstructured", target_speedup=0.0,
                                stream_sparsity=0.0, sparsity=0.9)  # any level > 0: the layers
    prunable = sum(int(paths.get_layer(teacher, n).kernel.get_value().size)
                   for n in layers_to_prune(teacher, prune))
    nz_dense, nz_cut = size["nonzero"]["dense"], size["nonzero"]["compressed"]
    level = min(max((nz_dense - nz_cut) / prunable, 0.01), 0.99)
    logging.info("baseline unstructured: %.4f of %d prunable weights removed, for %d non-zeros "
                 "(the structured specialist's)", level, prunable, nz_cut)
    same = dataclasses.replace(config, prune=dataclasses.replace(prune, sparsity=round(level, 4)),
                               baselines=())
    model, masks, pruned, info = _prune_and_recover(
        teacher, calib_x, calib_y, data, same, same.prune.method,
        same.prune.resolved_allocation, store, "unstructured")
    timings.update(unstructured_prune=pruned["seconds"], unstructured_recover=info["seconds"])
    return _pruned_row(STRUCTURED_LABELS["unstructured"], teacher, model, masks, pruned, info,
                       image_shape, sparsity_level=round(level, 4)), model


def _dcvit_at_macs(teacher, size, calib_x, data, config, store, timings,
                   image_shape) -> tuple[dict, nnx.Module | None]:
    """The "dcvit" baseline of a structured ViT run: DC-ViT's cut at the structured
    specialist's MACs (``size``: its report's, from ``compression.size``), by
    ``dcvit.plan_at_macs`` (the k least attention-sensitive blocks lose attention, every MLP
    keeps the fraction that matches the MACs, compensated by structured OBS on the task's
    images; the candidate with the lowest one-shot final-feature error),
    recovered DC-ViT's way (final-feature distillation, no labels) with TACO's recovery budget
    and data. (report row, its model), or ({"skipped": why}, None) when no plan of the family
    has those MACs, or in a multi-process run (DC-ViT's cut and recovery are single-process)."""
    if jax.process_count() > 1:
        logging.info("baseline dcvit skipped: DC-ViT runs in a single process")
        return {"skipped": "DC-ViT runs in a single process"}, None
    macs = size["macs"]["compressed"]
    batches = _calibration_batches(calib_x, data, config)
    prune = dataclasses.replace(config.prune, target_speedup=0.0, stream_sparsity=0.0)
    model = nnx.clone(teacher)  # cut in place to the chosen candidate (DC-ViT's stage shapes)
    stage = "dcvit_cut_at_macs"
    done = store.info(stage) if store.done(stage) else {}
    if "structure" in done:  # the chosen cut's shapes, to restore into
        dcvit.rebuild(model, done["structure"])

    def cut():
        plan, chosen, candidates = dcvit.plan_at_macs(teacher, batches, macs, (1, *image_shape),
                                                      prune=prune)
        info = {"plan": None if plan is None else dataclasses.asdict(plan),
                "candidates": candidates}
        if chosen is not None:
            dcvit.rebuild(model, dcvit.structure(chosen))
            nnx.update(model, nnx.state(chosen))
            info.update(structure=dcvit.structure(model), before_recovery=data.evaluate(model))
        return None, info

    _, cut_info = store.run(stage, f"dcvit: the cut with the specialist's {macs:,} MACs "
                            "(candidates cut by structured OBS on the MLPs)", model, cut)
    if cut_info["plan"] is None:
        logging.info("baseline dcvit skipped: no DC-ViT plan has %d MACs (%s)", macs,
                     cut_info["candidates"])
        return {"skipped": f"no DC-ViT plan has the specialist's {macs:,} MACs",
                "candidates": cut_info["candidates"]}, None
    plan = dcvit.Plan(tuple(cut_info["plan"]["attn"]), tuple(cut_info["plan"]["mlp_keep"]))
    recover_config = dataclasses.replace(config.recover, ce_weight=0.0, kd_weight=0.0)

    def recover():
        dcvit.recover(model, teacher, calib_x, recover_config, data.preprocess,
                      unlabelled=data.unlabelled_images, mesh=data.mesh, desc="dcvit recover")
        distributed.broadcast_model(model)
        acc = data.evaluate(model)
        logging.info("dcvit after recovery: top-1 %.2f%%", acc["top1"])
        return None, {"accuracy": acc}

    _, recovered = store.run("dcvit_recover", f"dcvit: recover {recover_config.steps} steps "
                             "(final-feature distillation from the dense task teacher)",
                             model, recover)
    timings.update(dcvit_cut=cut_info["seconds"], dcvit_recover=recovered["seconds"])
    return {"label": STRUCTURED_LABELS["dcvit"], "compressed": recovered["accuracy"],
            "before_recovery": cut_info["before_recovery"], "plan": plan.label(),
            "candidates": cut_info["candidates"],
            "size": compression.size(teacher, model, {}, image_shape)}, model


def _pruned_row(label: str, teacher, model, masks, pruned: dict, recovered: dict, image_shape,
                **extra) -> dict:
    """A pruned baseline's report row from ``_prune_and_recover``'s outputs: label, top-1
    after and before recovery, schedule, size (and the zeros' summary for masked patterns),
    plus ``extra`` fields."""
    row = {"label": label, "compressed": recovered["accuracy"],
           "before_recovery": pruned["before_recovery"], **extra, "schedule": pruned["steps"],
           "size": compression.size(teacher, model, masks, image_shape)}
    if masks:
        row["sparsity"] = compression.summarize(model, masks)
    return row


def _prune_and_recover(teacher, calib_x, calib_y, data, config, method, allocation, store,
                       tag, solver_x=None, allocated=None):
    """Prune a copy of ``teacher`` (at each of ``config.levels()``) with ``method`` at the
    per-layer levels of ``allocation`` and recover it by KD on (``calib_x``, ``calib_y``);
    every step is a checkpointed stage. ``solver_x``: the images the one-shot steps (Hessians,
    error curves, BatchNorm re-estimation) see instead of ``calib_x`` (the task-agnostic
    baseline). ``allocated``: the final step's per-layer sparsities, allocated already (the
    speed budget's), instead of ``allocation``. Returns (student, masks, prune info, recovery
    info)."""
    student = nnx.clone(teacher)
    solver_x = calib_x if solver_x is None else solver_x
    what = "task" if solver_x is calib_x else "generic"
    batches = _calibration_batches(solver_x, data, config)
    levels = config.levels()
    history = []
    for k, sparsity in enumerate(levels):
        final = k == len(levels) - 1
        step = "" if len(levels) == 1 else f"_{k + 1}"
        prune_config = dataclasses.replace(  # magnitude ignores the data: its own targets
            config.prune, method=method, sparsity=sparsity,
            allocation=allocation,
            targets="self" if method == "magnitude" else config.prune.targets)
        recover_config = dataclasses.replace(
            config.recover, steps=config.final_recover_steps() if final else config.schedule_steps)

        def prune(prune_config=prune_config, step=step, final=final):
            names = layers_to_prune(student, prune_config)
            solved = [*names, *(r for p in residual_streams(student) for r in p.consumers
                                if prune_config.stream_sparsity)]
            with_norm = batchnorm_after(student) if config.restore_scale else {}
            before = {n: np.asarray(paths.get_layer(student, n).kernel.get_value())
                      for n in solved if n in with_norm}
            result = sequential.prune_model(student, batches, prune_config, layers=names,
                                            checkpoint_dir=_str(store.path(f"{tag}_prune{step}")),
                                            mesh=data.mesh,
                                            levels=allocated if final else None)
            if before:
                factors = batchnorm.restore_scale(student, before, *kept_channels(
                    cuts_by_consumer(student, prune_config.pairs), result.kept))
                if factors:
                    c = np.concatenate(list(factors.values()))
                    logging.info("%s: %d compensated convs scaled back to their dense norms "
                                 "(factors %.2f–%.2f, median %.2f; folded into BatchNorm)", tag,
                                 len(factors), c.min(), c.max(), np.median(c))
            if config.reestimate_bn:
                batchnorm.reestimate(student, solver_x, data.preprocess)
                distributed.broadcast_model(student)  # every process ran it on its own
            pruned = data.evaluate(student)
            logging.info("%s after pruning to %.0f%%, before recovery: top-1 %.2f%%", tag,
                         100 * prune_config.sparsity, pruned["top1"])
            return result.masks, {"before_recovery": pruned,
                                  "layers": [dataclasses.asdict(s) for s in result.stats],
                                  "kept": {k: v.tolist() for k, v in result.kept.items()}}

        name = f"{tag}_prune{step}"
        if store.done(name):  # structured cuts change shapes: replay them before restoring
            _replay_cuts(student, store.info(name)["kept"], config)
        level = "" if ":" in str(prune_config.pattern) else f" at {sparsity:.0%}"  # N:M: fixed
        rule = prune_config.resolved_allocation
        masks, pruned = store.run(name, f"{tag}: prune ({method}, {prune_config.pattern}"
                               f"{level}, {rule} levels) on {len(solver_x)} {what} images",
                               student, prune)

        def recover(masks=masks, recover_config=recover_config, step=step):
            fit.fit(student, calib_x, calib_y, recover_config, data.preprocess, teacher=teacher,
                    constrain=lambda m: sequential.apply_masks(m, masks),
                    unlabelled=data.unlabelled_images, mesh=data.mesh,
                    desc=f"{tag} recover{step}")
            distributed.broadcast_model(student)  # every process trained on its own
            acc = data.evaluate(student)
            logging.info("%s after recovery: top-1 %.2f%%", tag, acc["top1"])
            return masks, {"accuracy": acc}

        pool = ("" if data.unlabelled_images is None else
                f" + {len(data.unlabelled_images)} unlabelled pool images")
        _, recovered = store.run(f"{tag}_recover{step}",
                              f"{tag}: recover {recover_config.steps} steps on {len(calib_x)} "
                              f"task images{pool} (KD from the dense task teacher, masks fixed)",
                              student, recover)
        history.append({"sparsity": sparsity, "before_recovery": pruned["before_recovery"],
                        "after_recovery": recovered["accuracy"],
                        "prune_seconds": pruned["seconds"],
                        "recover_seconds": recovered["seconds"]})
    pruned = dict(pruned, seconds=sum(h["prune_seconds"] for h in history), steps=history)
    recovered = dict(recovered, seconds=sum(h["recover_seconds"] for h in history))
    return student, masks, pruned, recovered


def _task_agnostic(teacher, calib_x, calib_y, data: TaskData, config: TacoConfig, store,
                   timings: dict) -> dict:
    """TACO's central claim, measured: the same prune (method, allocation, schedule) with
    the one-shot steps calibrated on as many generic images (``TaskData.generic_images``,
    a seeded draw) as there are few-shot task images, then the same recovery on the task's
    few shots. Skipped (said in the report) when the task data has no generic images."""
    if data.generic_images is None or len(data.generic_images) == 0:
        logging.info("task_agnostic baseline skipped: no generic images (TaskData."
                     "generic_images; a run takes them from config.pool or the dataset's "
                     "other classes)")
        return {"skipped": "no generic images to calibrate on"}
    rng = np.random.default_rng(config.seed)
    n = min(len(calib_x), len(data.generic_images))
    generic = data.generic_images[np.sort(rng.choice(len(data.generic_images), n,
                                                     replace=False))]
    model, masks, pruned, recovered = _prune_and_recover(
        teacher, calib_x, calib_y, data, config, config.prune.method, config.prune.allocation,
        store, "task_agnostic", solver_x=generic)
    timings.update(task_agnostic_prune=pruned["seconds"],
                   task_agnostic_recover=recovered["seconds"])
    return {"compressed": recovered["accuracy"], "before_recovery": pruned["before_recovery"],
            "calibration_images": n, "schedule": pruned["steps"],
            "sparsity": compression.summarize(model, masks)}


STRUCTURED_LABELS = {**BASELINE_LABELS,
                     "magnitude": "channel-norm pruning, TACO's layer allocation",
                     "magnitude_uniform": "channel-norm pruning, uniform widths (Torch-Pruning)"}


def measure_speed(dense: nnx.Module, models: dict[str, nnx.Module], data: TaskData,
                  batch: int, plain: dict[str, nnx.Module] | None = None) -> dict:
    """Measured speed of ``models`` against ``dense`` at batch 1 and ``batch``: on this
    device's XLA runtime, and in onnxruntime on the CPU when it is installed (``plain``: the
    models to export there, without sparse-kernel layers). Per runtime and batch all models
    share interleaved rounds with one dense reference (``models.latency.speedups``): {runtime:
    {"batch_<B>": {...}}}, or {runtime: {"skipped": why}}. The batch repeats the test images
    as needed."""
    images = data.test_images
    xs = [data.preprocess(jnp.asarray(np.resize(images, (b, *images.shape[1:]))))
          for b in sorted({1, batch})]
    runtimes = {f"xla-{jax.default_backend()}":
                lambda: [speedups(dense, models, x) for x in xs]}
    out: dict[str, dict] = {}
    if onnx_export.available():
        runtimes["onnxruntime-cpu"] = lambda: onnx_export.onnxruntime_speedups(
            dense, plain or models, xs)
    else:
        out["onnxruntime-cpu"] = {"skipped": "pip install 'taco-jax[onnx]' to measure it"}
    for runtime, measure in runtimes.items():
        try:
            rows = measure()
        except (ValueError, ImportError) as e:  # an export that failed its own check
            out[runtime] = {"skipped": str(e).splitlines()[0]}
            logging.warning("speed in %s not measured: %s", runtime, out[runtime]["skipped"])
            continue
        out[runtime] = {f"batch_{row['batch']}": row for row in rows}
        for row in rows:
            logging.info("speed in %s at batch %d: %s (dense %.1f ms)", runtime, row["batch"],
                         ", ".join(f"{n} {row[n]['speedup']:.2f}x" for n in models),
                         1e3 * row["reference_seconds"])
    return out


def _speed_budget(teacher, calib_x, data: TaskData, config: TacoConfig, store
                  ) -> tuple[TacoConfig, dict]:
    """``config`` with ``prune.sparsity`` set to the level measured ``prune.target_speedup``
    times faster than the teacher at ``latency_batch`` (a checkpointed stage: a resumed run
    keeps the level it found), and the search's record."""
    batches = _calibration_batches(calib_x, data, config)
    x = data.preprocess(jnp.asarray(np.resize(calib_x, (config.latency_batch,
                                                        *calib_x.shape[1:]))))
    probe = nnx.clone(teacher)

    def search():
        level, info = speed_budget.sparsity_for_speedup(
            probe, batches, config.prune, layers_to_prune(probe, config.prune), x,
            mesh=data.mesh)
        return None, {"sparsity": level, **info}

    _, info = store.run("speed_budget", f"speed budget: the structured level "
                        f"{config.prune.target_speedup:g}x faster than dense at batch "
                        f"{config.latency_batch}", None, search)
    logging.info("speed budget: prune to %.3f of the pairs' MACs", info["sparsity"])
    prune = dataclasses.replace(config.prune, sparsity=info["sparsity"])
    return dataclasses.replace(config, prune=prune), dict(info)


def _str(path: Path | None) -> str | None:
    return None if path is None else os.fspath(path)


def compress(model: nnx.Module, data: TaskData, config: TacoConfig, *,
             workdir: str | os.PathLike | None = None) -> CompressedModel:
    """Compress a generalist ``model`` for the task ``data`` (the input model is not modified).

    ``workdir``: where stage checkpoints go (``<workdir>/stages``); None keeps nothing.
    """
    baselines = config.resolved_baselines()
    if "dcvit" in baselines and not isinstance(model, VisionTransformer):
        if config.baselines != "auto":
            raise ValueError(f"baseline dcvit cuts a vision transformer's attention and MLPs; "
                             f"the model is a {type(model).__name__}")
        baselines = tuple(b for b in baselines if b != "dcvit")
    store = stages.StageStore(None if workdir is None else Path(workdir) / "stages")
    ids = few_shot_indices(data.train_labels, config.shots, config.seed)
    calib_x, calib_y = data.train_images[ids], data.train_labels[ids]
    logging.info("few-shot set: %d images (%d per class, seed %d)", len(ids), config.shots,
                 config.seed)
    _banner("adapt: the dense task teacher")
    teacher, adapt_info = adapt.task_teacher(model, data.class_ids, calib_x, calib_y,
                                             len(data.class_names), data.preprocess,
                                             how=config.adapt, l2=config.probe_l2 or None)
    del model  # only the teacher from here: a caller that hands the model over frees it
    dense = data.evaluate(teacher)
    timings = {"adapt": adapt_info.pop("seconds")}
    logging.info("dense task teacher: top-1 %.2f%% on %d test images", dense["top1"], dense["n"])
    pool_ids = None
    if data.unlabelled_images is not None and config.pool_retrieve:
        pool_ids = retrieval.nearest_pool(teacher, calib_x, data.unlabelled_images,
                                          config.pool_retrieve, data.preprocess)
        logging.info("recovery pool: the %d of %d images nearest to the few-shot set",
                     len(pool_ids), len(data.unlabelled_images))
        data = dataclasses.replace(data, unlabelled_images=data.unlabelled_images[pool_ids])
    budget = None
    if config.prune.target_speedup:
        config, budget = _speed_budget(teacher, calib_x, data, config, store)
        timings["speed_budget"] = budget.pop("seconds")

    student, masks, pruned, recovered = _prune_and_recover(  # the budget's allocation, reused
        teacher, calib_x, calib_y, data, config, config.prune.method, config.prune.allocation,
        store, "taco", allocated=None if budget is None else budget.get("levels"))
    timings.update(taco_prune=pruned["seconds"], taco_recover=recovered["seconds"])
    image_shape = tuple(data.test_images.shape[1:])
    report = {
        "task": data.record(ids, config.shots),
        "adapt": adapt_info,
        "dense": dense,
        "compressed": recovered["accuracy"],
        "recovery_data": {"labelled": len(calib_x)} if data.unlabelled_images is None else {
            "labelled": len(calib_x), "unlabelled": len(data.unlabelled_images),
            "unlabelled_share": config.recover.unlabelled_share,
            "pool_ids": None if pool_ids is None else pool_ids.tolist()},
        "compressed_before_recovery": pruned["before_recovery"],
        "schedule": pruned["steps"],
        "pattern": str(config.prune.pattern),
        "size": compression.size(teacher, student, masks, image_shape),
        "layers": pruned["layers"],
        "baselines": {},
    }
    if masks:  # masked patterns: the zeros; structured cuts are in "size" and "kept"
        report["sparsity"] = compression.summarize(student, masks)
    if budget is not None:
        report["speed_budget"] = budget
    structured = config.prune.structured
    timed = {"taco": student}  # the models whose speed the report measures
    for name, allocation in MAGNITUDE_BASELINES.items():
        if name not in baselines:
            continue
        allocation = allocation or config.prune.resolved_allocation
        mag_model, mag_masks, mag_pruned, mag = _prune_and_recover(
            teacher, calib_x, calib_y, data, config, "magnitude", allocation, store, name)
        report["baselines"][name] = _pruned_row(
            (STRUCTURED_LABELS if structured else BASELINE_LABELS)[name], teacher, mag_model,
            mag_masks, mag_pruned, mag, image_shape, allocation=allocation)
        if structured:  # other shapes than TACO's: timed too
            timed[name] = mag_model
        del mag_model, mag_masks  # otherwise alive through the next rows (ResNet-50: 0.1 GB)
        timings.update({f"{name}_prune": mag_pruned["seconds"],
                        f"{name}_recover": mag["seconds"]})
    if "unstructured" in baselines:
        report["baselines"]["unstructured"], timed["unstructured"] = _as_many_nonzeros(
            teacher, report["size"], calib_x, calib_y, data, config, store, timings,
            image_shape)
    if "dcvit" in baselines:
        report["baselines"]["dcvit"], model = _dcvit_at_macs(
            teacher, report["size"], calib_x, data, config, store, timings, image_shape)
        if model is not None:
            timed["dcvit"] = model
    if "task_agnostic" in baselines:
        report["baselines"]["task_agnostic"] = _task_agnostic(
            teacher, calib_x, calib_y, data, config, store, timings)
    if "dense_finetune" in baselines:
        tuned = nnx.clone(teacher)

        budget = config.recover.steps

        def finetune():  # the same total number of steps as the pruned models' recovery
            fit.fit(tuned, calib_x, calib_y, dataclasses.replace(
                config.recover, kd_weight=0.0, ce_weight=1.0, steps=budget), data.preprocess,
                mesh=data.mesh, desc="dense finetune")
            distributed.broadcast_model(tuned)
            return None, {"accuracy": data.evaluate(tuned)}

        _, info = store.run("dense_finetune", f"baseline: dense teacher fine-tuned on the "
                         f"few-shot set, {budget} steps", tuned, finetune)
        report["baselines"]["dense_finetune"] = info["accuracy"]
        timings["dense_finetune"] = info["seconds"]
    if config.latency_batch:
        t = _banner(f"speed: dense vs {', '.join(timed)}, batch 1 and {config.latency_batch}")
        # The compressed model as it is deployed: pruned Linears on the block-sparse kernels
        # where they beat dense on this device (on CPU, the masked dense matmul).
        deployed = nnx.clone(student)
        report["latency_paths"] = export.with_sparse_kernels(
            deployed, export.block_shape_for(str(config.prune.pattern)))
        report["speed"] = measure_speed(teacher, {**timed, "taco": deployed}, data,
                                        config.latency_batch, plain=timed)
        timings["latency"] = time.perf_counter() - t
    report["seconds"] = timings
    report["memory_mib"] = dict(store.memory)
    return CompressedModel(model=student, masks=masks, report=report)
