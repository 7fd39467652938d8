"""Solver timing per layer shape: ``python -m taco_jax.prune.bench [--patterns ...]``.

Compile time (first call minus a warm call) is reported apart; run time is the median of
``--repeats`` warm calls with ``block_until_ready``. H comes from random correlated inputs.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import jax
import numpy as np

from taco_jax.prune.solver import prune_layer

SHAPES = {  # (d_out, d_in) of W
    "vit_b16.attn.qkv-like 768x768": (768, 768),
    "vit_b16.mlp.fc1 3072x768": (3072, 768),
    "vit_b16.mlp.fc2 768x3072": (768, 3072),
    "resnet50.layer4.conv2 512x(512*3*3)": (512, 4608),
}


def random_problem(d_out: int, d_in: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(2 * d_in, d_in)).astype(np.float32)
    X = X @ (np.eye(d_in, dtype=np.float32) + 0.1 * rng.normal(size=(d_in, d_in)).astype(
        np.float32))
    H = 2 * X.T @ X / X.shape[0]
    return rng.normal(size=(d_out, d_in)).astype(np.float32), H


def time_one(W, H, pattern, sparsity, method, repeats):
    run = lambda: jax.block_until_ready(prune_layer(W, H, pattern, sparsity, method=method))
    t0 = time.perf_counter()
    run()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return max(first - med, 0.0), med


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--patterns", default="unstructured,2:4,block16x16,structured")
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--method", default="sparsegpt")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--shapes", default=",".join(SHAPES))
    args = ap.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}, "
          f"{len(jax.devices())} device(s); sparsity {args.sparsity}, method {args.method}")
    print(f"{'shape':40s} {'pattern':12s} {'compile s':>10s} {'run s (median)':>15s}")
    for name in args.shapes.split(","):
        W, H = random_problem(*SHAPES[name])
        for pattern in args.patterns.split(","):
            if pattern == "structured" and "conv" in name:
                pattern = "structured9"  # a 3x3 conv's input channel = 9 columns
            c, r = time_one(W, H, pattern, args.sparsity, args.method, args.repeats)
            print(f"{name:40s} {pattern:12s} {c:10.2f} {r:15.3f}", flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"peak host RSS: {peak:.2f} GiB")


if __name__ == "__main__":
    main()
