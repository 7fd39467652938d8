"""Solver timing per layer shape: ``python -m taco_jax.bench.solver [--patterns ...]``.

Compile time (first call minus a warm call) is reported apart; run time is the median of
``--repeats`` warm calls with ``block_until_ready``. H comes from random correlated inputs.

Scaling over devices (rows of W sharded over a mesh of the first n devices), with the memory
XLA plans per device (arguments + outputs + temporaries of the compiled solve):

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m taco_jax.bench.solver \
      --shapes=vit_s16 --patterns=unstructured --devices=1,2,4,8
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np

from taco_jax.distributed import device_mesh
from taco_jax.memory import peak_rss_mib
from taco_jax.prune.patterns import parse_pattern
from taco_jax.prune.solver import _prune_core, _sharded_core, prune_counts, prune_layer

SHAPES = {  # (d_out, d_in) of W
    "vit_b16.attn.qkv-like 768x768": (768, 768),
    "vit_b16.mlp.fc1 3072x768": (3072, 768),
    "vit_b16.mlp.fc2 768x3072": (768, 3072),
    "resnet50.layer4.conv2 512x(512*3*3)": (512, 4608),
}
DEFAULT_SHAPES = tuple(SHAPES)
VIT_S16 = {  # every ViT-S/16 block: qkv, proj, fc1, fc2
    "vit_s16.attn.qkv 1152x384": (1152, 384),
    "vit_s16.attn.proj 384x384": (384, 384),
    "vit_s16.mlp.fc1 1536x384": (1536, 384),
    "vit_s16.mlp.fc2 384x1536": (384, 1536),
}
SHAPES.update(VIT_S16)


def random_problem(d_out: int, d_in: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(2 * d_in, d_in)).astype(np.float32)
    X = X @ (np.eye(d_in, dtype=np.float32) + 0.1 * rng.normal(size=(d_in, d_in)).astype(
        np.float32))
    H = 2 * X.T @ X / X.shape[0]
    return rng.normal(size=(d_out, d_in)).astype(np.float32), H


def time_one(W, H, pattern, sparsity, method, repeats, mesh=None):
    run = lambda: jax.block_until_ready(prune_layer(W, H, pattern, sparsity, method=method,
                                                    mesh=mesh))
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


def memory_per_device(W, H, pattern, sparsity, method, mesh) -> float:
    """MiB XLA plans on one device for the solve: arguments + outputs + temporaries."""
    pat = parse_pattern(pattern)
    counts = jax.numpy.asarray(prune_counts(pat, sparsity, *W.shape, 128))
    kw = dict(pattern=pat, blocksize=128, percdamp=0.01, method=method)
    if mesh is None:
        lowered = _prune_core.lower(W, H, counts, **kw)
    else:
        lowered = _sharded_core(mesh, **kw).lower(W, H, counts)
    m = lowered.compile().memory_analysis()
    return (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--patterns", default="unstructured,2:4,block16x16,structured")
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--method", default="sparsegpt")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--shapes", default=",".join(DEFAULT_SHAPES),
                    help="comma-separated names of SHAPES, or vit_s16 for its four layers")
    ap.add_argument("--devices", default="",
                    help="comma-separated device counts: shard the rows over the first n "
                    "devices (e.g. 1,2,4,8) and report the memory per device")
    args = ap.parse_args()
    names = [n for a in args.shapes.split(",") for n in (VIT_S16 if a == "vit_s16" else [a])]
    if args.devices:
        scaling(names, args)
        return
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}, "
          f"{len(jax.devices())} device(s); sparsity {args.sparsity}, method {args.method}")
    print(f"{'shape':40s} {'pattern':12s} {'compile s':>10s} {'run s (median)':>15s}")
    for name in names:
        W, H = random_problem(*SHAPES[name])
        for pattern in args.patterns.split(","):
            if pattern == "structured" and "conv" in name:
                pattern = "structured9"  # a 3x3 conv's input channel = 9 columns
            c, r = time_one(W, H, pattern, args.sparsity, args.method, args.repeats)
            print(f"{name:40s} {pattern:12s} {c:10.2f} {r:15.3f}", flush=True)
    peak = peak_rss_mib() / 1024
    print(f"peak host RSS: {peak:.2f} GiB")


def scaling(names, args) -> None:
    counts = [int(n) for n in args.devices.split(",")]
    if max(counts) > len(jax.devices()):
        raise SystemExit(f"--devices={args.devices} needs {max(counts)} devices, this process "
                         f"has {len(jax.devices())} (XLA_FLAGS=--xla_force_host_platform_"
                         "device_count=N on CPU)")
    print(f"{'shape':30s} {'pattern':12s} {'devices':>7s} {'compile s':>10s} "
          f"{'run s (median)':>15s} {'MiB/device':>11s}")
    for name in names:
        W, H = random_problem(*SHAPES[name])
        for pattern in args.patterns.split(","):
            for n in counts:
                mesh = device_mesh(jax.devices()[:n])
                c, r = time_one(W, H, pattern, args.sparsity, args.method, args.repeats, mesh)
                mib = memory_per_device(W, H, pattern, args.sparsity, args.method, mesh)
                print(f"{name:30s} {pattern:12s} {n:7d} {c:10.2f} {r:15.3f} {mib:11.1f}",
                      flush=True)


if __name__ == "__main__":
    main()
