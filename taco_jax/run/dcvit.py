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

import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from taco_jax import files, stages
from taco_jax.data.task import calibration_batches
from taco_jax.methods import dcvit
from taco_jax.models import latency
from taco_jax.models.vit import VisionTransformer
from taco_jax.prune import sequential
from taco_jax.run import common, dcvit_sweep
from taco_jax.train import fit

MODES = ("compress", "sweep")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything ``run_dcvit`` needs, validated."""

    dcvit: dcvit.DcvitConfig
    source: common.Source


def _depth(model: common.ModelSource) -> int:
    """The ViT's block count, from the model built abstractly (a cheap preflight)."""
    abstract = model.abstract()
    if not isinstance(abstract, VisionTransformer):
        raise ValueError(f"the model {model.describe()!r} is a {model.arch}, not a ViT/DeiT; "
                         "DC-ViT needs one")
    return len(abstract.blocks)


def _check_blocks(name: str, values, depth: int, low: int) -> None:
    bad = [v for v in values if not low <= v <= depth]
    if bad:
        raise ValueError(f"{name} has {bad}; expected block counts in [{low}, {depth}]")


def _check_plan(name: str, attn_free: int, mlp_keep, depth: int) -> None:
    """A plan in ``dcvit.ranked_plan`` terms: attention-free blocks and per-block MLP fractions
    (one number: the same fraction in every block)."""
    if isinstance(mlp_keep, int | float) and not isinstance(mlp_keep, bool):
        mlp_keep = (mlp_keep,) * depth
    if not isinstance(mlp_keep, (tuple, list)):
        raise ValueError(f"{name} has ({attn_free}, {mlp_keep!r}); expected a kept MLP fraction "
                         "for every block, or a tuple of them, one per block, least sensitive "
                         "first")
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


def _mlp_keep(value) -> float | tuple[float, ...]:
    return float(value) if isinstance(value, int | float) else tuple(value)


def parse(config: ml_collections.ConfigDict) -> Settings:
    """Typed, validated settings; raises ValueError naming a bad value, before any work.
    ``then_prune.recover_steps`` 0 is ``recover.steps``; ``generalist.steps`` 0 the model's."""
    if config.mode not in MODES:
        raise ValueError(f"config.mode={config.mode!r}; expected one of {MODES}")
    src = common.parse_source(config)
    depth = _depth(src.model)
    _check_plan("config.plan", config.plan.attn_blocks, config.plan.mlp_keep, depth)
    _check_blocks("config.baseline_drop_blocks", [config.baseline_drop_blocks], depth - 1, 0)
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
    recover = common.fit_config(config.recover, config.seed)
    then_recover_steps = config.then_prune.recover_steps
    if then_recover_steps < 0:
        raise ValueError(f"config.then_prune.recover_steps={then_recover_steps}; expected >= 1, "
                         f"or 0 for config.recover.steps ({recover.steps})")
    then_prune = None
    if config.then_prune.sparsity > 0:
        then_prune = sequential.PruneConfig(pattern=config.then_prune.pattern,
                                            sparsity=config.then_prune.sparsity,
                                            blocksize=config.prune.blocksize,
                                            percdamp=config.prune.percdamp)
    d = dcvit.DcvitConfig(
        shots=config.shots, seed=config.seed, recover=recover,
        prune=sequential.PruneConfig(blocksize=config.prune.blocksize,
                                     percdamp=config.prune.percdamp),
        block_outputs=config.block_outputs, calibration_batch=config.calibration_batch,
        attn_blocks=config.plan.attn_blocks, mlp_keep=_mlp_keep(config.plan.mlp_keep),
        then_prune=then_prune, then_recover_steps=then_recover_steps,
        baseline_drop_blocks=config.baseline_drop_blocks, latency_batch=config.latency.batch,
        latency_repeats=config.latency.repeats, adapt=config.adapt)
    return Settings(d, src)


# ----------------------------------------------------------------------------- entry point


def run_dcvit(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict:
    """Run the configured mode, write its outputs to ``workdir``; returns the report/sweep.

    ``compress`` is the library call ``methods.dcvit.compress``; ``sweep`` cuts many plans of
    the same prepared teacher (``methods.dcvit.prepare``), each recovery a resumable stage."""
    s = parse(config)
    workdir = common.open_workdir(config, workdir)
    done = common.finished(workdir, "sweep.json" if config.mode == "sweep" else "report.json")
    if done is not None:
        return done
    start = time.perf_counter()
    model, generalist, data = common.load_task_data(config, s.source, workdir)
    if config.mode == "sweep":
        prep = dcvit.prepare(model, data, s.dcvit)
        files.write_json(workdir / "few_shot_ids.json", prep.ids.tolist())
        header = {"model": s.source.model.describe(), "generalist": generalist,
                  "task": {"classes": list(data.class_names), "shots": s.dcvit.shots,
                           "unlabeled_images": len(prep.ids),
                           "test_images": len(data.test_labels)},
                  "dense": {**prep.dense,
                            **dcvit.size(prep.teacher, (1, *data.test_images.shape[1:]))},
                  "block_scores": prep.scores}
        out = _sweep(config, s, prep, data, header, workdir)
    else:
        result = dcvit.compress(model, data, s.dcvit)
        ids = result.report["task"].pop("few_shot_ids")
        files.write_json(workdir / "few_shot_ids.json", ids)
        out = {"model": s.source.model.describe(), "generalist": generalist, **result.report}
        dcvit.save(workdir / "compressed", result.model)
        if result.masks:
            files.write_npz(workdir / "masks.npz", result.masks)
        out["specialist"] = common.write_specialist(workdir, result.model, s.source,
                                                    data.class_names, "dcvit")
    out["seconds"]["total"] = time.perf_counter() - start
    out["environment"] = common.environment()
    files.write_json(workdir / ("sweep.json" if config.mode == "sweep" else "report.json"), out)
    return out


def _stage_name(method: str, plan: dcvit.Plan, seed: int) -> str:
    label = plan.label().replace("|", "_").replace(".", "p")
    return f"{method}-{label}-seed{seed}"


def _recovered(store: stages.StageStore, stage: str, prep: dcvit.Prepared, data,
               cut: Callable[[], object], s: Settings, seed: int, desc: str
               ) -> tuple[VisionTransformer, dict]:
    """One recovery of a cut plan with recovery seed ``seed``, as a checkpointed stage (a rerun
    restores it); returns the model and {top1, top5, structure, seconds}."""
    if store.done(stage):  # its record says which branches to remove before restoring
        model = dcvit.rebuild(nnx.clone(prep.teacher), store.info(stage)["structure"])
        _, info = store.load(stage, model)
        return model, info
    start = time.perf_counter()
    model = nnx.clone(cut())
    recover = dataclasses.replace(s.dcvit.recover, seed=seed)
    dcvit.recover(model, prep.teacher, prep.images, recover, data.preprocess,
                  block_outputs=s.dcvit.block_outputs, mesh=data.mesh, desc=desc)
    acc = fit.evaluate(model, data.test_images, data.test_labels, data.preprocess)
    info = {"top1": acc["top1"], "top5": acc["top5"], "structure": dcvit.structure(model),
            "seconds": time.perf_counter() - start}
    store.save(stage, model, None, info)
    return model, info


def _sweep(config, s: Settings, prep: dcvit.Prepared, data, header: dict, workdir: Path
           ) -> dict:
    """Every plan cut once, recovered once per seed (each a resumable stage under stages/), then
    all plans timed in one interleaved session against the dense teacher."""
    depth = len(prep.teacher.blocks)
    plans = [("dcvit", dcvit.ranked_plan(prep.attn_order, k, fractions))
             for k, fractions in config.sweep.dcvit]
    plans += [("block_drop", dcvit.cut_plan(depth, prep.drop_order[:n], 0.0))
              for n in config.sweep.drop_blocks]
    seeds = list(config.sweep.seeds)
    store = stages.StageStore(workdir / "stages")
    batches = calibration_batches(prep.images, data.preprocess,
                                        s.dcvit.calibration_batch)
    out = {**header, "method": "dcvit_sweep", "seeds": seeds,
           "recovery": {**dataclasses.asdict(s.dcvit.recover),
                        "block_outputs": s.dcvit.block_outputs},
           "points": {"dcvit": [], "block_drop": []}, "seconds": {},
           "load_average": {"start": list(os.getloadavg())}}
    shape = (1, *data.test_images.shape[1:])
    timed = []
    t0 = time.perf_counter()
    for i, (method, plan) in enumerate(plans):
        logging.info("sweep %d/%d: %s %s (%.0fs so far)", i + 1, len(plans), method,
                     plan.label(), time.perf_counter() - t0)
        cut_model = []

        def cut(plan=plan, cut_model=cut_model):  # cut once per plan, only if a seed needs it
            if not cut_model:
                model = nnx.clone(prep.teacher)
                dcvit.apply_plan(model, plan, batches, s.dcvit.prune)
                cut_model.append(model)
            return cut_model[0]

        runs = [_recovered(store, _stage_name(method, plan, seed), prep, data, cut, s, seed,
                           f"{method} {plan.label()} seed {seed}") for seed in seeds]
        top1 = np.array([info["top1"] for _, info in runs])
        se = float(top1.std(ddof=1) / np.sqrt(len(top1))) if len(top1) > 1 else 0.0
        point = {"plan": plan.label(), "attn": list(plan.attn), "mlp_keep": list(plan.mlp_keep),
                 "top1": float(top1.mean()), "top1_se": se, "top1_seeds": top1.tolist(),
                 "top5": (None if runs[0][1]["top5"] is None else  # 5 classes or fewer
                          float(np.mean([info["top5"] for _, info in runs]))),
                 **dcvit.size(runs[0][0], shape), "structure": runs[0][1]["structure"],
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
    lats = latency.paired_latency(prep.teacher, timed, prep.latency_x,
                                      repeats=config.latency.repeats)
    out["seconds"]["latency"] = time.perf_counter() - start
    out["load_average"]["after_latency"] = list(os.getloadavg())
    for point, lat in zip([p for m in out["points"].values() for p in m], lats, strict=True):
        point["latency"] = lat
    out["comparison"] = compare(out["points"], prep.dense["top1"], config.sweep.targets)
    dcvit_sweep.plot(out["points"], prep.dense["top1"], workdir / "frontier.png",
                     f"{s.source.model.arch} on {', '.join(data.class_names)}: {s.dcvit.shots} "
                     f"unlabeled shots/class, {s.dcvit.recover.steps} recovery steps,\n"
                     f"mean ± s.e. of {len(seeds)} recovery seed(s)")
    for line in summary_lines(out):
        logging.info("%s", line)
    return out


def compare(points: dict, dense_top1: float, targets) -> dict:
    """Frontiers of both methods (on mean accuracies), DC-ViT's models and strict frontier points
    between 10% and 50% latency reduction, how many of its models there are within one standard
    error of its frontier, and each method's frontier accuracy at every target reduction
    (interpolated). ``clear_frontier``: each method's plans that no model (the dense one
    included) beats beyond the timing spread (``dcvit_sweep.clear_frontier``), the members a
    re-timing keeps; how many of DC-ViT's are in 10–50%."""
    fronts = {m: dcvit_sweep.frontier([(0.0, dense_top1)] + [(p["latency"]["reduction"],
                                                            p["top1"]) for p in pts])
              for m, pts in points.items()}
    in_range = [p for p in points["dcvit"] if 0.10 <= p["latency"]["reduction"] <= 0.50]
    near = [p for p in in_range
            if p["top1"] + p.get("top1_se", 0.0)
            >= dcvit_sweep.accuracy_at(fronts["dcvit"], p["latency"]["reduction"])]
    at = {f"{t:.2f}": {m: dcvit_sweep.accuracy_at(f, t) for m, f in fronts.items()}
          for t in targets}
    clear = {}
    for m, pts in points.items():  # the dense model (no spread) competes, is not listed
        spreads = [p["latency"].get("spread", [p["latency"]["reduction"]] * 2) for p in pts]
        kept = dcvit_sweep.clear_frontier([(dense_top1, 0.0, 0.0)] + [
            (p["top1"], lo, hi) for p, (lo, hi) in zip(pts, spreads, strict=True)])
        clear[m] = [pts[i - 1]["plan"] for i in kept if i > 0]
    return {"frontiers": fronts,
            "dcvit_frontier_points_10_50": sum(0.10 <= r <= 0.50 for r, _ in fronts["dcvit"]),
            "dcvit_points_10_50": len(in_range),
            "dcvit_within_one_se_of_frontier_10_50": len(near),
            "clear_frontier": clear,
            "dcvit_clear_frontier_10_50": sum(
                0.10 <= p["latency"]["reduction"] <= 0.50 for p in points["dcvit"]
                if p["plan"] in clear["dcvit"]),
            "accuracy_at": at}


def summary_lines(out: dict) -> list[str]:
    c = out["comparison"]
    lines = [f"dense task teacher top-1 {out['dense']['top1']:.2f}%",
             f"DC-ViT models with 10-50% lower latency: {c['dcvit_points_10_50']}; on the strict "
             f"Pareto frontier (medians): {c['dcvit_frontier_points_10_50']}; within one "
             f"standard error of it: {c['dcvit_within_one_se_of_frontier_10_50']}; not beaten "
             f"beyond the timing spread: {c['dcvit_clear_frontier_10_50']}"]
    for m, plans in c["clear_frontier"].items():
        lines.append(f"{m} frontier beyond the timing spread: {', '.join(plans) or 'none'}")
    for t, accs in c["accuracy_at"].items():
        vals = ", ".join(f"{m} {'n/a' if a is None else f'{a:.2f}%'}" for m, a in accs.items())
        lines.append(f"at {float(t):.0%} lower latency (interpolated): {vals}")
    return lines
