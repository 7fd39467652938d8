"""Whole-model sequential pruning time: ``python -m taco_jax.bench.prune_model --model NAME``.

Random weights and random smooth images (timing only). Prints the total wall time, the part spent
collecting Hessians (scales with the number of images) and the part spent solving (does not),
the peak resident memory, and the run against its FLOP floor: the multiply-accumulates that no
implementation avoids (one forward pass of every image, plus every layer group's Hessian
``Σ xxᵀ`` over its input columns; the solves, which do not grow with the images, are left out,
so the floor is a lower bound) at this machine's matrix-product rate, measured here beside the
run (the best of a Gram product and a forward-shaped product).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax import lax

import taco_jax.models.resnet  # registers the zoo
import taco_jax.models.vit  # noqa: F401
from taco_jax.memory import peak_rss_mib
from taco_jax.models import registry
from taco_jax.models.latency import timed_rounds
from taco_jax.models.paths import get_layer
from taco_jax.models.stats import forward_macs
from taco_jax.prune.allocate import positions_per_image
from taco_jax.prune.hessian import input_dim
from taco_jax.prune.layout import groups
from taco_jax.prune.segments import forward_groups
from taco_jax.prune.sequential import PruneConfig, default_layers, prune_model


def floor_macs(model, image: np.ndarray, config: PruneConfig) -> tuple[int, int]:
    """(forward MACs, Hessian MACs) per image: ``forward_macs`` of one image, and over the
    layer groups ``prune_model`` collects (one Hessian per group) positions · G · k²."""
    names = default_layers(model, config)
    pos = positions_per_image(model, image, names)
    hess = 0
    for _, group in forward_groups(model, image, names):
        layer = get_layer(model, group[0])
        hess += pos[group[0]] * groups(layer) * input_dim(layer) ** 2
    return forward_macs(model, image.shape), hess


def gemm_rate(repeats: int = 5) -> float:
    """Multiply-accumulates per second of this machine's best float32 matrix product: the
    better of a Gram product (3152, 1536)ᵀ(3152, 1536) and (3152, 384) @ (384, 1536)."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(3152, 1536)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(384, 1536)), jnp.float32)
    gram = jax.jit(lambda x: lax.dot_general(x, x, (((0,), (0,)), ((), ()))))
    fwd = jax.jit(lambda x, w: x[:, :384] @ w)
    best = 0.0
    for fn, args, macs in ((gram, (x,), 3152 * 1536**2), (fwd, (x, w), 3152 * 384 * 1536)):
        [times] = timed_rounds([lambda fn=fn, args=args: jax.block_until_ready(fn(*args))],
                               warmup=1, min_rounds=repeats, max_rounds=repeats)
        best = max(best, macs / min(times))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="vit_small_patch16_224", help="a zoo model name")
    ap.add_argument("--images", type=int, default=32, help="calibration images")
    ap.add_argument("--batch", type=int, default=16, help="images per calibration batch")
    ap.add_argument("--size", type=int, default=0,
                    help="image side in pixels (0: the model's input size)")
    ap.add_argument("--pattern", default="unstructured", help="sparsity pattern")
    ap.add_argument("--sparsity", type=float, default=0.9, help="share of weights removed")
    ap.add_argument("--method", default="auto",
                    help="the layer solver: auto, sparsegpt, obc, admm, magnitude (prune.method)")
    ap.add_argument("--no_refit", action="store_true",
                    help="SparseGPT / ADMM without the exact re-solve on its mask "
                         "(prune.refit=False)")
    args = ap.parse_args()
    logging.set_verbosity(logging.WARNING)
    model = registry.create(args.model, num_classes=1000)
    size, channels = args.size or model.preprocess.input_size, len(model.preprocess.mean)
    rng = np.random.default_rng(0)
    batches = [rng.normal(size=(min(args.batch, args.images - i), size, size, channels))
               .astype(np.float32) for i in range(0, args.images, args.batch)]
    config = PruneConfig(pattern=args.pattern, sparsity=args.sparsity, method=args.method,
                         refit=not args.no_refit)
    fwd_macs, hess_macs = floor_macs(model, batches[0][:1], config)
    rate = gemm_rate()
    t0 = time.perf_counter()
    res = prune_model(model, batches, config)
    total = time.perf_counter() - t0
    hess = sum(s.hessian_seconds for s in res.stats)
    solve = sum(s.seconds - s.hessian_seconds for s in res.stats)
    peak = peak_rss_mib() / 1024
    floor = (fwd_macs + hess_macs) * args.images / rate
    print(f"{args.model} {args.pattern} {args.sparsity} images={args.images} "
          f"layers={len(res.stats)} method={args.method} refit={not args.no_refit} "
          f"jax={jax.__version__}")
    print(f"total {total:.1f}s  hessians {hess:.1f}s  solves {solve:.1f}s  "
          f"other {total - hess - solve:.1f}s  peak RSS {peak:.2f} GiB")
    print(f"FLOP floor {floor:.1f}s ({fwd_macs / 1e9:.2f} forward + {hess_macs / 1e9:.2f} "
          f"Hessian GMAC per image at {2 * rate / 1e9:.0f} GFLOP/s measured): total is "
          f"{total / floor:.2f}x the floor, the Hessian part {hess / floor:.2f}x")
    print(f"mean layer relative error {np.mean([s.rel_error for s in res.stats]):.4f}")
    for s in res.stats:
        print(f"  {s.name:28s} {'x'.join(map(str, s.shape)):14s} sparsity {s.sparsity:.3f} "
              f"rel.err {s.rel_error:.3e}  hessian {s.hessian_seconds:.2f}s  "
              f"solve {s.seconds - s.hessian_seconds:.2f}s")


if __name__ == "__main__":
    main()
