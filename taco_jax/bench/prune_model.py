"""Whole-model sequential pruning time: ``python -m taco_jax.bench.prune_model --model NAME``.

Random weights and random smooth images (timing only). Prints the total wall time, the part spent
collecting Hessians (scales with the number of images) and the part spent solving (does not).
"""

from __future__ import annotations

import argparse
import resource
import time

import jax
import numpy as np
from absl import logging

import taco_jax.models.resnet  # registers the zoo
import taco_jax.models.vit  # noqa: F401
from taco_jax.models import registry
from taco_jax.prune.sequential import PruneConfig, prune_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="vit_small_patch16_224")
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--pattern", default="unstructured")
    ap.add_argument("--sparsity", type=float, default=0.9)
    args = ap.parse_args()
    logging.set_verbosity(logging.WARNING)
    model = registry.create(args.model, num_classes=1000)
    rng = np.random.default_rng(0)
    batches = [rng.normal(size=(min(args.batch, args.images - i), args.size, args.size, 3))
               .astype(np.float32) for i in range(0, args.images, args.batch)]
    t0 = time.perf_counter()
    res = prune_model(model, batches, PruneConfig(pattern=args.pattern, sparsity=args.sparsity))
    total = time.perf_counter() - t0
    hess = sum(s.hessian_seconds for s in res.stats)
    solve = sum(s.seconds - s.hessian_seconds for s in res.stats)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"{args.model} {args.pattern} {args.sparsity} images={args.images} "
          f"layers={len(res.stats)} jax={jax.__version__}")
    print(f"total {total:.1f}s  hessians {hess:.1f}s  solves {solve:.1f}s  "
          f"other {total - hess - solve:.1f}s  peak RSS {peak:.2f} GiB")
    for s in res.stats:
        print(f"  {s.name:28s} {'x'.join(map(str, s.shape)):14s} sparsity {s.sparsity:.3f} "
              f"rel.err {s.rel_error:.3e}  hessian {s.hessian_seconds:.2f}s  "
              f"solve {s.seconds - s.hessian_seconds:.2f}s")


if __name__ == "__main__":
    main()
