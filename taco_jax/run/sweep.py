"""Accuracy vs compression: TACO and the run's pruned baselines (magnitude pruning; TACO
calibrated on generic images, ``task_agnostic``; same schedule and recovery) at several
sparsities, written as sweep.json and a PNG plot next to the dense teacher and the dense
few-shot fine-tune.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from absl import logging
from flax import nnx
from matplotlib.figure import Figure  # the OO API: no pyplot, no GUI backend

from taco_jax.methods import taco

# The baselines that are pruned models, one curve each in the sweep.
CURVES = (*taco.MAGNITUDE_BASELINES, "task_agnostic")


def run_sweep(model: nnx.Module, data: taco.TaskData, config: taco.TacoConfig,
              sparsities: tuple[float, ...], workdir: str | os.PathLike, main: dict) -> list[dict]:
    """One TACO run per sparsity with the pruned baselines (``CURVES``) of ``config.baselines``
    (each resumable in ``workdir/s<sparsity>``); the main run's report ``main`` adds its point
    and the dense references. Writes ``sweep.json`` and ``sweep.png`` next to ``workdir``;
    returns the points."""
    workdir = Path(workdir)
    baselines = tuple(b for b in config.resolved_baselines() if b in CURVES)
    points = [_point(main)]
    for s in sparsities:
        if abs(s - config.prune.sparsity) < 1e-9:
            continue
        logging.info("sweep: sparsity %.2f", s)
        schedule = (config.schedule if config.schedule == "auto" else  # the same budget
                    tuple(x for x in config.schedule if x < s))
        c = dataclasses.replace(config, prune=dataclasses.replace(config.prune, sparsity=s),
                                schedule=schedule, baselines=baselines, latency_batch=0)
        points.append(_point(taco.compress(model, data, c, workdir=workdir / f"s{s:.4f}").report))
    points.sort(key=lambda p: p["sparsity"])
    (workdir.parent / "sweep.json").write_text(json.dumps(points, indent=2))
    plot(points, main, workdir.parent / "sweep.png")
    return points


def _point(report: dict) -> dict:
    s = report["sparsity"]["pruned_layers"]
    return {"sparsity": s["sparsity"], "compression": s["compression"],
            "taco_top1": report["compressed"]["top1"],
            "baselines_top1": {name: b["compressed"]["top1"]
                               for name, b in report["baselines"].items()
                               if name in CURVES and "compressed" in b}}


def plot(points: list[dict], main: dict, path: str | os.PathLike) -> None:
    """Top-1 vs compression of the pruned layers (log x), dense references as lines."""
    fig = Figure(figsize=(6, 4), dpi=120)
    ax = fig.subplots()
    x = [p["compression"] for p in points]
    ax.plot(x, [p["taco_top1"] for p in points], "o-", label="TACO (second-order, task data)")
    for name, marker in zip(CURVES, "s^vD", strict=True):
        mag = [(p["compression"], p["baselines_top1"][name]) for p in points
               if name in p["baselines_top1"]]
        if mag:
            ax.plot(*zip(*mag, strict=True), marker + "--",
                    label=f"{taco.BASELINE_LABELS[name]}, same recovery")
    ax.axhline(main["dense"]["top1"], color="k", lw=1, label="dense task teacher")
    finetune = main["baselines"].get("dense_finetune")
    if finetune:
        ax.axhline(finetune["top1"], color="gray", ls=":", label="dense few-shot fine-tune")
    ax.set_xscale("log")
    ax.set_xticks(x, [f"{c:.1f}x" for c in x])
    ax.minorticks_off()
    ax.set_xlabel("compression of the pruned layers (params / non-zeros)")
    ax.set_ylabel("task top-1 (%)")
    ax.set_title(f"{', '.join(main['task']['classes'])}: {main['task']['shots']} shots")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
