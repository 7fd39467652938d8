"""The demo's one-shot prune, no recovery: test top-1 of the pruned task teacher per solver and
seed (TACO's allocation and stem rule, BatchNorm re-estimated on the few shots, as the pipeline
does before recovering):

  python -m taco_jax.bench.oneshot --solvers=auto,sparsegpt,magnitude --seeds=0,1,2,3,4

Solvers: "auto" (the default: OBC where cheap, else ADMM (unstructured) or SparseGPT, + the exact
re-solve), "obc", "admm" (+ the re-solve), "sparsegpt+refit", "sparsegpt" (no re-solve),
"magnitude" (its own error curves, no compensation). Prints one row per solver: top-1 per seed,
mean and spread, mean layer error and prune seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import numpy as np
from flax import nnx

from taco_jax import generalist
from taco_jax.data.task import Task, TaskData, calibration_batches, few_shot_indices
from taco_jax.methods import adapt, taco
from taco_jax.prune import sequential
from taco_jax.train import batchnorm

SOLVERS = {"auto": ("auto", True), "obc": ("obc", False), "admm": ("admm", True),  # (method,
           "sparsegpt+refit": ("sparsegpt", True), "sparsegpt": ("sparsegpt", False),  # refit)
           "magnitude": ("magnitude", False)}


def one_shot(data: TaskData, teacher: nnx.Module, config: sequential.PruneConfig, seed: int,
             shots: int) -> tuple[float, float, float]:
    """(test top-1 %, mean layer relative error, prune seconds) of one pruned copy."""
    ids = few_shot_indices(data.train_labels, shots, seed)
    x = data.train_images[ids]
    student = nnx.clone(teacher)
    t0 = time.perf_counter()
    result = sequential.prune_model(student, calibration_batches(x, data.preprocess, 64), config,
                                    layers=taco.layers_to_prune(student, config))
    seconds = time.perf_counter() - t0
    batchnorm.reestimate(student, x, data.preprocess)
    return (data.evaluate(student)["top1"], float(np.mean([s.rel_error for s in result.stats])),
            seconds)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--solvers", default="auto,sparsegpt,magnitude",
                   help=f"comma-separated, of {', '.join(SOLVERS)}")
    p.add_argument("--seeds", default="0", help="comma-separated few-shot seeds")
    p.add_argument("--pattern", default="unstructured")
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--targets", default="self", choices=("self", "dense"))
    p.add_argument("--shots", type=int, default=32)
    args = p.parse_args(argv)
    solvers = args.solvers.split(",")
    unknown = [s for s in solvers if s not in SOLVERS]
    if unknown:
        p.error(f"unknown solvers {unknown}; allowed: {', '.join(SOLVERS)}")
    model = generalist.load("resnet_mini")
    task = Task("taco_embedded", classes=("cat", "cow", "dog", "horse", "sheep"))
    data = TaskData.load(task, model, labels=generalist.CLASS_NAMES)
    teacher = adapt.restrict_head(nnx.clone(model), data.class_ids)
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"dense teacher {data.evaluate(teacher)['top1']:.1f}; one-shot {args.pattern} at "
          f"{args.sparsity}, targets {args.targets}, seeds {seeds}")
    for name in solvers:
        method, refit = SOLVERS[name]
        config = dataclasses.replace(
            taco.default_prune(), pattern=args.pattern, sparsity=args.sparsity, method=method,
            refit=refit,
            targets="self" if method == "magnitude" else args.targets)
        runs = [one_shot(data, teacher, config, seed, args.shots) for seed in seeds]
        top1 = [r[0] for r in runs]
        spread = statistics.stdev(top1) if len(top1) > 1 else 0.0
        print(f"{name:>16}: top-1 {' '.join(f'{a:.1f}' for a in top1)} | mean "
              f"{statistics.mean(top1):.1f} ± {spread:.1f} | layer error "
              f"{np.mean([r[1] for r in runs]):.4f} | prune {np.mean([r[2] for r in runs]):.0f} s",
              flush=True)


if __name__ == "__main__":
    main()
