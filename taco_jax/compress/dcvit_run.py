"""Run DC-ViT from a config (what ``launch/dcvit.py`` calls): one compressed model, or the sweep.

Both modes: load the embedded generalist ViT, restrict its classifier to the task (the dense task
teacher), draw the unlabeled few-shot images, rank blocks by ``dcvit.block_scores``.
- ``compress``: cut the configured plan, recover, optionally prune what remains with TACO's
  second-order pruning; the same-budget block-dropping baseline; measured latency; writes
  report.json, compressed/ (orbax state + structure.json), few_shot_ids.json, config.json.
- ``sweep``: a dense family of DC-ViT models (blocks without attention × MLP fraction) and the
  block-dropping models, each with task accuracy and measured latency; writes sweep.json
  (updated after every model) and frontier.png.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from taco_jax import models
from taco_jax.compress import adapt, dcvit, dcvit_sweep, run, sparsity_report
from taco_jax.data.task import Task, few_shot_indices
from taco_jax.models import stats
from taco_jax.models.vit import VisionTransformer
from taco_jax.prune import sequential
from taco_jax.train import fit

MODES = ("compress", "sweep")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything ``run_dcvit`` needs, validated."""

    dcvit: dcvit.DcvitConfig
    generalist: fit.FitConfig
    task: Task
    then_prune: sequential.PruneConfig | None
    then_recover: fit.FitConfig | None


def _depth(model_name: str) -> int:
    model = nnx.eval_shape(lambda: models.create(model_name, num_classes=2, rngs=nnx.Rngs(0)))
    if not isinstance(model, VisionTransformer):
        raise ValueError(f"config.model={model_name!r} is not a ViT/DeiT; DC-ViT needs one")
    return len(model.blocks)


def _check_blocks(name: str, values, depth: int, low: int) -> None:
    bad = [v for v in values if not low <= v <= depth]
    if bad:
        raise ValueError(f"{name} has {bad}; expected block counts in [{low}, {depth}]")


def _check_fractions(name: str, values) -> None:
    bad = [v for v in values if not 0.0 < v <= 1.0]
    if bad:
        raise ValueError(f"{name} has {bad}; expected MLP keep fractions in (0, 1]")


def parse(config: ml_collections.ConfigDict) -> Settings:
    """Typed, validated settings; raises ValueError naming a bad value, before any work."""
    if config.mode not in MODES:
        raise ValueError(f"config.mode={config.mode!r}; expected one of {MODES}")
    gen, task = run.parse_source(config)
    depth = _depth(config.model)
    _check_blocks("config.plan.attn_blocks", [config.plan.attn_blocks], depth, 0)
    _check_fractions("config.plan.mlp_keep", [config.plan.mlp_keep])
    _check_blocks("config.baseline_drop_blocks", [config.baseline_drop_blocks], depth - 1, 1)
    for entry in config.sweep.dcvit:
        if len(entry) != 3:
            raise ValueError(f"config.sweep.dcvit has {entry}; expected (attention-free blocks, "
                             "their MLP keep fraction, the other blocks' MLP keep fraction)")
        _check_blocks("config.sweep.dcvit", [entry[0]], depth, 1)
        _check_fractions("config.sweep.dcvit", entry[1:])
    _check_blocks("config.sweep.drop_blocks", config.sweep.drop_blocks, depth - 1, 1)
    bad = [t for t in config.sweep.targets if not 0.0 < t < 1.0]
    if bad:
        raise ValueError(f"config.sweep.targets has {bad}; expected latency reductions in (0, 1)")
    if config.latency.batch < 1 or config.latency.repeats < 1:
        raise ValueError(f"config.latency needs batch, repeats >= 1, got "
                         f"{config.latency.to_dict()}")
    recover = fit.FitConfig(seed=config.seed, **config.recover.to_dict())
    d = dcvit.DcvitConfig(
        shots=config.shots, seed=config.seed, recover=recover,
        prune=sequential.PruneConfig(blocksize=config.prune.blocksize,
                                     percdamp=config.prune.percdamp),
        block_outputs=config.block_outputs, calibration_batch=config.calibration_batch)
    then_prune = then_recover = None
    if config.then_prune.sparsity > 0:
        then_prune = sequential.PruneConfig(pattern=config.then_prune.pattern,
                                            sparsity=config.then_prune.sparsity,
                                            blocksize=config.prune.blocksize,
                                            percdamp=config.prune.percdamp)
        then_recover = dataclasses.replace(recover, steps=config.then_prune.recover_steps)
    return Settings(d, gen, task, then_prune, then_recover)


# ----------------------------------------------------------------------------- shared set-up


@dataclasses.dataclass
class _Setup:
    teacher: VisionTransformer
    images: np.ndarray  # unlabeled few-shot images
    ids: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    preprocess: object
    dense: dict
    latency_x: jax.Array
    attn_order: list[int]
    drop_order: list[int]
    scores: dict


def _setup(config, s: Settings) -> tuple[_Setup, dict]:
    model, gen_info, data = run.load_task_data(config, s.generalist, s.task)
    teacher = adapt.restrict_head(nnx.clone(model), data.class_ids)
    teacher.eval()
    norm = data.preprocess
    train_x, train_y, test_x, test_y = (data.train_images, data.train_labels, data.test_images,
                                        data.test_labels)
    ids = few_shot_indices(train_y, s.dcvit.shots, s.dcvit.seed)
    images = train_x[ids]
    logging.info("unlabeled few-shot set: %d images (%d per class)", len(ids), s.dcvit.shots)
    dense = fit.evaluate(teacher, test_x, test_y, norm)
    logging.info("dense task teacher: top-1 %.2f%% on %d test images", dense["top1"], dense["n"])
    batches = dcvit.calibration_batches(images, norm, s.dcvit.calibration_batch)
    attn_scores = dcvit.block_scores(teacher, batches, drop_block=False)
    drop_scores = dcvit.block_scores(teacher, batches, drop_block=True)
    logging.info("block scores (final-feature error): attention removed %s, block dropped %s",
                 np.round(attn_scores, 4).tolist(), np.round(drop_scores, 4).tolist())
    reps = -(-config.latency.batch // len(test_x))
    latency_x = norm(np.concatenate([test_x] * reps)[:config.latency.batch])
    setup = _Setup(teacher, images, ids, test_x, test_y, norm, dense, latency_x,
                   np.argsort(attn_scores, kind="stable").tolist(),
                   np.argsort(drop_scores, kind="stable").tolist(),
                   {"attention_removed": attn_scores.tolist(),
                    "block_dropped": drop_scores.tolist()})
    return setup, gen_info


def _size(model, input_shape) -> dict:
    return {"params": stats.param_count(model), "macs": stats.forward_macs(model, input_shape)}


def _evaluate_cut(setup: _Setup, plan: dcvit.Plan, s: Settings, config, desc: str
                  ) -> tuple[VisionTransformer, dict]:
    """Cut + recover one plan; its accuracy (before/after recovery), size and paired latency."""
    student, info = dcvit.cut_and_recover(setup.teacher, plan, setup.images, setup.preprocess,
                                          s.dcvit, desc=desc)
    acc = fit.evaluate(student, setup.test_x, setup.test_y, setup.preprocess)
    lat = dcvit_sweep.paired_latency(setup.teacher, student, setup.latency_x,
                                     repeats=config.latency.repeats)
    shape = (1, *setup.test_x.shape[1:])
    point = {"plan": plan.label(), "attn": list(plan.attn), "mlp_keep": list(plan.mlp_keep),
             "top1": acc["top1"], "top5": acc["top5"], "latency": lat,
             **_size(student, shape), "structure": dcvit.structure(student),
             "layers": info["layers"], "seconds": info["seconds"]}
    logging.info("%s %s: top-1 %.2f%%, latency %.1f ms vs dense %.1f ms (%.1f%% lower)", desc,
                 plan.label(), acc["top1"], 1e3 * lat["compressed"], 1e3 * lat["dense"],
                 100 * lat["reduction"])
    return student, point


# ----------------------------------------------------------------------------- entry point


def run_dcvit(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict:
    """Run the configured mode, write its outputs to ``workdir``; returns the report/sweep."""
    s = parse(config)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    run.write_json(workdir / "config.json", json.loads(config.to_json_best_effort()))
    start = time.perf_counter()
    setup, gen_info = _setup(config, s)
    run.write_json(workdir / "few_shot_ids.json", setup.ids.tolist())
    header = {"model": config.model,
              "generalist": {k: gen_info[k] for k in ("test_top1", "test_top5", "path")},
              "task": {"classes": list(s.task.class_names()), "shots": s.dcvit.shots,
                       "unlabeled_images": len(setup.ids), "test_images": len(setup.test_y)},
              "dense": {**setup.dense, **_size(setup.teacher, (1, *setup.test_x.shape[1:]))},
              "block_scores": setup.scores}
    if config.mode == "sweep":
        out = _sweep(config, s, setup, header, workdir)
    else:
        out = _compress(config, s, setup, header, workdir)
    out["seconds"]["total"] = time.perf_counter() - start
    out["environment"] = run.environment()
    run.write_json(workdir / ("sweep.json" if config.mode == "sweep" else "report.json"), out)
    return out


def _compress(config, s: Settings, setup: _Setup, header: dict, workdir: Path) -> dict:
    depth = len(setup.teacher.blocks)
    plan = dcvit.cut_plan(depth, setup.attn_order[:config.plan.attn_blocks],
                          config.plan.mlp_keep)
    student, point = _evaluate_cut(setup, plan, s, config, "dcvit")
    masks: dict = {}
    report = {**header, "method": "dcvit", "compressed": point, "baselines": {},
              "seconds": dict(point["seconds"])}
    if s.then_prune is not None:  # composition with TACO: second-order pruning of what remains
        batches = dcvit.calibration_batches(setup.images, setup.preprocess,
                                            s.dcvit.calibration_batch)
        result = sequential.prune_model(student, batches, s.then_prune)
        masks = result.masks
        dcvit.recover(student, setup.teacher, setup.images, s.then_recover, setup.preprocess,
                      block_outputs=s.dcvit.block_outputs,
                      constrain=lambda m: sequential.apply_masks(m, masks), desc="taco recover")
        acc = fit.evaluate(student, setup.test_x, setup.test_y, setup.preprocess)
        report["then_prune"] = {"pattern": str(s.then_prune.pattern),
                                "sparsity": s.then_prune.sparsity, "top1": acc["top1"],
                                "top5": acc["top5"],
                                "layers": [dataclasses.asdict(x) for x in result.stats]}
        logging.info("DC-ViT + TACO (%s at %.0f%%): top-1 %.2f%%", s.then_prune.pattern,
                     100 * s.then_prune.sparsity, acc["top1"])
    report["sparsity"] = sparsity_report.summarize(student, masks)
    report["layers"] = point["layers"]
    report["latency"] = point["latency"]
    report["params"] = {"dense": header["dense"]["params"], "compressed": point["params"]}
    report["macs"] = {"dense": header["dense"]["macs"], "compressed": point["macs"]}

    drop = dcvit.cut_plan(depth, setup.drop_order[:config.baseline_drop_blocks], 0.0)
    _, base = _evaluate_cut(setup, drop, s, config, "block_drop")
    report["baselines"]["block_drop"] = base
    dcvit.save(workdir / "compressed", student)
    if masks:
        np.savez_compressed(workdir / "masks.npz", **{k: np.asarray(v) for k, v in masks.items()})
    return report


def _sweep(config, s: Settings, setup: _Setup, header: dict, workdir: Path) -> dict:
    depth = len(setup.teacher.blocks)
    plans = [("dcvit", dcvit.cut_plan(depth, setup.attn_order[:k], f, rest))
             for k, f, rest in config.sweep.dcvit]
    plans += [("block_drop", dcvit.cut_plan(depth, setup.drop_order[:n], 0.0))
              for n in config.sweep.drop_blocks]
    out = {**header, "method": "dcvit_sweep", "points": {"dcvit": [], "block_drop": []},
           "seconds": {}}
    t0 = time.perf_counter()
    for i, (method, plan) in enumerate(plans):
        logging.info("sweep %d/%d: %s %s (%.0fs so far)", i + 1, len(plans), method,
                     plan.label(), time.perf_counter() - t0)
        _, point = _evaluate_cut(setup, plan, s, config, method)
        point.pop("layers")
        out["points"][method].append(point)
        run.write_json(workdir / "sweep.json", out)  # partial results survive an interruption
    out["seconds"]["sweep"] = time.perf_counter() - t0
    out["comparison"] = compare(out["points"], setup.dense["top1"], config.sweep.targets)
    dcvit_sweep.plot(out["points"], setup.dense["top1"], workdir / "frontier.png",
                     f"{config.model} on {', '.join(s.task.class_names())}: {s.dcvit.shots} "
                     f"unlabeled shots/class, {s.dcvit.recover.steps} recovery steps")
    for line in summary_lines(out):
        logging.info("%s", line)
    return out


def compare(points: dict, dense_top1: float, targets) -> dict:
    """Frontiers of both methods, DC-ViT's distinct frontier points between 10% and 50% latency
    reduction, and each method's frontier accuracy at every target reduction."""
    fronts = {m: dcvit_sweep.frontier([(0.0, dense_top1)] + [(p["latency"]["reduction"],
                                                            p["top1"]) for p in pts])
              for m, pts in points.items()}
    in_range = [p for p in fronts["dcvit"] if 0.10 <= p[0] <= 0.50]
    at = {f"{t:.2f}": {m: dcvit_sweep.accuracy_at(f, t) for m, f in fronts.items()}
          for t in targets}
    return {"frontiers": fronts, "dcvit_frontier_points_10_50": len(in_range),
            "dcvit_points_10_50": sum(0.10 <= p["latency"]["reduction"] <= 0.50
                                      for p in points["dcvit"]),
            "accuracy_at": at}


def summary_lines(out: dict) -> list[str]:
    c = out["comparison"]
    lines = [f"dense task teacher top-1 {out['dense']['top1']:.2f}%",
             f"DC-ViT models with 10-50% lower latency: {c['dcvit_points_10_50']} "
             f"({c['dcvit_frontier_points_10_50']} on the frontier)"]
    for t, accs in c["accuracy_at"].items():
        vals = ", ".join(f"{m} {'n/a' if a is None else f'{a:.2f}%'}" for m, a in accs.items())
        lines.append(f"at {float(t):.0%} lower latency: {vals}")
    return lines
