"""Run DC-ViT from a config (what ``launch/dcvit.py`` calls): one compressed model, or the sweep.

Both modes: load the embedded generalist ViT, restrict its classifier to the task (the dense task
teacher), draw the unlabeled few-shot images, rank blocks by ``dcvit.block_scores``.
- ``compress``: cut the configured plan, recover, optionally prune what remains with TACO's
  second-order pruning; the same-budget block-dropping baseline; measured latency; writes
  report.json, compressed/ (orbax state + structure.json), few_shot_ids.json, config.json.
- ``sweep``: a dense family of DC-ViT models (which blocks lose attention × each block's MLP
  fraction, ``config.sweep.dcvit``) and the block-dropping models under the same data and
  recovery budget. Every model is cut once and recovered once per seed of ``config.sweep.seeds``
  (each recovery a checkpointed stage under stages/: a rerun resumes); its accuracy is the mean
  over seeds (± standard error); then all models are timed in one interleaved session against
  the dense teacher. Writes sweep.json and frontier.png.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from taco_jax import models
from taco_jax.compress import adapt, dcvit, dcvit_sweep, run, sparsity_report, stages
from taco_jax.data.task import Task, few_shot_indices
from taco_jax.models import latency, stats
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


def _check_plan(name: str, attn_free: int, mlp_keep, depth: int) -> None:
    """A plan in ``dcvit.ranked_plan`` terms: attention-free blocks and per-block MLP fractions."""
    if not isinstance(mlp_keep, (tuple, list)):
        raise ValueError(f"{name} has ({attn_free}, {mlp_keep!r}); expected a tuple of kept MLP "
                         "fractions, one per block, least sensitive first")
    where = f"{name} has ({attn_free}, {tuple(mlp_keep)})"
    if not 0 <= attn_free <= depth:
        raise ValueError(f"{where}: {attn_free} attention-free blocks; expected [0, {depth}]")
    if len(mlp_keep) > depth:
        raise ValueError(f"{where}: {len(mlp_keep)} MLP fractions for {depth} blocks")
    bad = [f for f in mlp_keep if not 0.0 < f <= 1.0]
    if bad:
        raise ValueError(f"{where}: MLP fractions {bad}; expected kept fractions in (0, 1]")
    if attn_free == 0 and all(f == 1.0 for f in mlp_keep):
        raise ValueError(f"{where}, which cuts nothing")


def parse(config: ml_collections.ConfigDict) -> Settings:
    """Typed, validated settings; raises ValueError naming a bad value, before any work."""
    if config.mode not in MODES:
        raise ValueError(f"config.mode={config.mode!r}; expected one of {MODES}")
    gen, task = run.parse_source(config)
    depth = _depth(config.model)
    _check_plan("config.plan", config.plan.attn_blocks, config.plan.mlp_keep, depth)
    _check_blocks("config.baseline_drop_blocks", [config.baseline_drop_blocks], depth - 1, 1)
    for entry in config.sweep.dcvit:
        if len(entry) != 2 or not isinstance(entry[1], (tuple, list)):
            raise ValueError(f"config.sweep.dcvit has {entry}; expected (attention-free blocks, "
                             "(kept MLP fraction of each block, least sensitive first))")
        _check_plan("config.sweep.dcvit", *entry, depth)
    seeds = list(config.sweep.seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"config.sweep.seeds={tuple(seeds)}; expected distinct recovery seeds")
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
    [lat] = latency.paired_latency(setup.teacher, [student], setup.latency_x,
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
    workdir = run.open_workdir(config, workdir)
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
    plan = dcvit.ranked_plan(setup.attn_order, config.plan.attn_blocks, config.plan.mlp_keep)
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


def _stage_name(method: str, plan: dcvit.Plan, seed: int) -> str:
    label = plan.label().replace("|", "_").replace(".", "p")
    return f"{method}-{label}-seed{seed}"


def _recovered(store: stages.StageStore, stage: str, setup: _Setup, cut: Callable[[], object],
               s: Settings, seed: int, desc: str) -> tuple[VisionTransformer, dict]:
    """One recovery of a cut plan with recovery seed ``seed``, as a checkpointed stage (a rerun
    restores it); returns the model and {top1, top5, structure, seconds}."""
    if store.done(stage):
        _, info = store.load(stage)
        model = dcvit.rebuild(nnx.clone(setup.teacher), info["structure"])
        store.load(stage, model)
        return model, info
    start = time.perf_counter()
    model = nnx.clone(cut())
    recover = dataclasses.replace(s.dcvit.recover, seed=seed)
    dcvit.recover(model, setup.teacher, setup.images, recover, setup.preprocess,
                  block_outputs=s.dcvit.block_outputs, desc=desc)
    acc = fit.evaluate(model, setup.test_x, setup.test_y, setup.preprocess)
    info = {"top1": acc["top1"], "top5": acc["top5"], "structure": dcvit.structure(model),
            "seconds": time.perf_counter() - start}
    store.save(stage, model, None, info)
    return model, info


def _sweep(config, s: Settings, setup: _Setup, header: dict, workdir: Path) -> dict:
    """Every plan cut once, recovered once per seed (each a resumable stage under stages/), then
    all plans timed in one interleaved session against the dense teacher."""
    depth = len(setup.teacher.blocks)
    plans = [("dcvit", dcvit.ranked_plan(setup.attn_order, k, fractions))
             for k, fractions in config.sweep.dcvit]
    plans += [("block_drop", dcvit.cut_plan(depth, setup.drop_order[:n], 0.0))
              for n in config.sweep.drop_blocks]
    seeds = list(config.sweep.seeds)
    store = stages.StageStore(workdir / "stages")
    batches = dcvit.calibration_batches(setup.images, setup.preprocess,
                                        s.dcvit.calibration_batch)
    out = {**header, "method": "dcvit_sweep", "seeds": seeds,
           "recovery": {**dataclasses.asdict(s.dcvit.recover),
                        "block_outputs": s.dcvit.block_outputs},
           "points": {"dcvit": [], "block_drop": []}, "seconds": {},
           "load_average": {"start": list(os.getloadavg())}}
    shape = (1, *setup.test_x.shape[1:])
    timed = []
    t0 = time.perf_counter()
    for i, (method, plan) in enumerate(plans):
        logging.info("sweep %d/%d: %s %s (%.0fs so far)", i + 1, len(plans), method,
                     plan.label(), time.perf_counter() - t0)
        cut_model = []

        def cut(plan=plan, cut_model=cut_model):  # cut once per plan, only if a seed needs it
            if not cut_model:
                model = nnx.clone(setup.teacher)
                dcvit.apply_plan(model, plan, batches, s.dcvit.prune)
                cut_model.append(model)
            return cut_model[0]

        runs = [_recovered(store, _stage_name(method, plan, seed), setup, cut, s, seed,
                           f"{method} {plan.label()} seed {seed}") for seed in seeds]
        top1 = np.array([info["top1"] for _, info in runs])
        se = float(top1.std(ddof=1) / np.sqrt(len(top1))) if len(top1) > 1 else 0.0
        point = {"plan": plan.label(), "attn": list(plan.attn), "mlp_keep": list(plan.mlp_keep),
                 "top1": float(top1.mean()), "top1_se": se, "top1_seeds": top1.tolist(),
                 "top5": float(np.mean([info["top5"] for _, info in runs])),
                 **_size(runs[0][0], shape), "structure": runs[0][1]["structure"],
                 "seconds": [info["seconds"] for _, info in runs]}
        logging.info("%s %s: top-1 %.2f ± %.2f%% over seeds %s", method, plan.label(),
                     point["top1"], se, seeds)
        out["points"][method].append(point)
        timed.append(runs[0][0])
    out["seconds"]["recover"] = time.perf_counter() - t0
    out["load_average"]["before_latency"] = list(os.getloadavg())
    logging.info("timing %d models against the dense teacher (%d interleaved repeats)",
                 len(timed), config.latency.repeats)
    start = time.perf_counter()
    lats = latency.paired_latency(setup.teacher, timed, setup.latency_x,
                                      repeats=config.latency.repeats)
    out["seconds"]["latency"] = time.perf_counter() - start
    out["load_average"]["after_latency"] = list(os.getloadavg())
    for point, lat in zip([p for m in out["points"].values() for p in m], lats, strict=True):
        point["latency"] = lat
    out["comparison"] = compare(out["points"], setup.dense["top1"], config.sweep.targets)
    dcvit_sweep.plot(out["points"], setup.dense["top1"], workdir / "frontier.png",
                     f"{config.model} on {', '.join(s.task.class_names())}: {s.dcvit.shots} "
                     f"unlabeled shots/class, {s.dcvit.recover.steps} recovery steps,\n"
                     f"mean ± s.e. of {len(seeds)} recovery seed(s)")
    for line in summary_lines(out):
        logging.info("%s", line)
    return out


def compare(points: dict, dense_top1: float, targets) -> dict:
    """Frontiers of both methods (on mean accuracies), DC-ViT's models and strict frontier points
    between 10% and 50% latency reduction, how many of its models there are within one standard
    error of its frontier, and each method's frontier accuracy at every target reduction."""
    fronts = {m: dcvit_sweep.frontier([(0.0, dense_top1)] + [(p["latency"]["reduction"],
                                                            p["top1"]) for p in pts])
              for m, pts in points.items()}
    in_range = [p for p in points["dcvit"] if 0.10 <= p["latency"]["reduction"] <= 0.50]
    near = [p for p in in_range
            if p["top1"] + p.get("top1_se", 0.0)
            >= dcvit_sweep.accuracy_at(fronts["dcvit"], p["latency"]["reduction"])]
    at = {f"{t:.2f}": {m: dcvit_sweep.accuracy_at(f, t) for m, f in fronts.items()}
          for t in targets}
    return {"frontiers": fronts,
            "dcvit_frontier_points_10_50": sum(0.10 <= r <= 0.50 for r, _ in fronts["dcvit"]),
            "dcvit_points_10_50": len(in_range),
            "dcvit_within_one_se_of_frontier_10_50": len(near),
            "accuracy_at": at}


def summary_lines(out: dict) -> list[str]:
    c = out["comparison"]
    lines = [f"dense task teacher top-1 {out['dense']['top1']:.2f}%",
             f"DC-ViT models with 10-50% lower latency: {c['dcvit_points_10_50']}; on the strict "
             f"Pareto frontier: {c['dcvit_frontier_points_10_50']}; within one standard error "
             f"of it: {c['dcvit_within_one_se_of_frontier_10_50']}"]
    for t, accs in c["accuracy_at"].items():
        vals = ", ".join(f"{m} {'n/a' if a is None else f'{a:.2f}%'}" for m, a in accs.items())
        lines.append(f"at {float(t):.0%} lower latency: {vals}")
    return lines
