"""Latency of structured cut shapes: ``python -m taco_jax.bench.widths --model resnet_mini``.

Each candidate keeps the first ``--stream_sparsity``-cut channels of every residual stream and,
per producer/consumer pair in ``shrink.infer_pairs`` order, the given number of inner channels;
every candidate is timed against the dense model in one interleaved session
(``models.latency.speedups``) on random weights and inputs (latency does not depend on them).
What it showed: XLA CPU's convolutions want whole multiples of 8 channels (BUILD_NOTES), which
is why ``prune.channel_multiple`` is 8.
"""

from __future__ import annotations

import argparse

import jax.numpy as jnp
import numpy as np
from flax import nnx

import taco_jax.models.resnet  # noqa: F401  (registers the zoo)
from taco_jax.models import registry
from taco_jax.models.latency import speedups
from taco_jax.models.paths import get_layer
from taco_jax.models.shrink import infer_pairs, residual_streams, shrink_pair


def cut(model: nnx.Module, stream_sparsity: float, inner: list[int]) -> nnx.Module:
    """A copy of ``model``: streams keep their first ``(1 − stream_sparsity)`` channels, pair i
    its first ``inner[i]`` inner channels (or all, for a missing entry)."""
    out = nnx.clone(model)
    for pair in residual_streams(out) if stream_sparsity else []:
        width = get_layer(out, pair.consumer).in_features
        shrink_pair(out, pair, np.arange(round(width * (1 - stream_sparsity))))
    for pair, keep in zip(infer_pairs(out), inner, strict=False):
        if keep < get_layer(out, pair.consumer).in_features:
            shrink_pair(out, pair, np.arange(keep))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet_mini", help="a zoo model name")
    ap.add_argument("--batch", type=int, default=64, help="images per timed call")
    ap.add_argument("--stream_sparsity", type=float, default=0.5,
                    help="share of every residual stream's channels cut (ResNets; 0 = none)")
    ap.add_argument("--widths", default="8,8,16,16,32,32;4,4,8,8,16,16;6,6,13,16,19,19",
                    help="candidates separated by ';', each the inner channels kept per pair")
    ap.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds")
    args = ap.parse_args()
    dense = registry.create(args.model, num_classes=10, rngs=nnx.Rngs(0))
    dense.eval()
    size, chans = dense.preprocess.input_size, len(dense.preprocess.mean)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(args.batch, size, size, chans)),
                    jnp.float32)
    candidates = {"streams only": cut(dense, args.stream_sparsity, [])}
    for spec in args.widths.split(";"):
        candidates[spec] = cut(dense, args.stream_sparsity, [int(w) for w in spec.split(",")])
    out = speedups(dense, candidates, x, min_rounds=args.rounds, max_rounds=args.rounds)
    print(f"{args.model}, batch {args.batch}, streams cut {args.stream_sparsity:.0%}; "
          f"speedup over dense (10-90% of rounds):")
    for name in candidates:
        lo, hi = out[name]["spread"]
        print(f"  inner {name:28s} {out[name]['speedup']:5.2f}x  ({lo:.2f}-{hi:.2f})")


if __name__ == "__main__":
    main()
