"""Recovery step time against its FLOP floor: ``python -m taco_jax.bench.recover_step``.

One step of TACO's recovery as ``fit.fit`` runs it: the dense teacher's forward pass, the
masked student's forward and backward pass (KD + CE, AdamW), the masks re-applied. Random
weights, images and masks (timing only). The floor is the multiply-accumulates of the teacher's
forward (1x), the student's forward (1x) and backward (2x: input and weight gradients) at this
machine's matrix-product rate measured beside it (``bench.prune_model.gemm_rate``), times the
devices: ``--devices=N`` trains data parallel over the first N (``fit.fit(mesh=)``: each batch
split by rows), so the step against the N-device floor shows how well it scales.
"""

from __future__ import annotations

import argparse
import statistics

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

import taco_jax.models.resnet  # registers the zoo
import taco_jax.models.vit  # noqa: F401
from taco_jax import distributed
from taco_jax.bench.prune_model import gemm_rate
from taco_jax.memory import peak_rss_mib
from taco_jax.models import registry
from taco_jax.models.paths import body_layers, get_layer
from taco_jax.models.stats import forward_macs
from taco_jax.prune.sequential import apply_masks
from taco_jax.train import fit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="vit_small_patch16_224", help="a zoo model name")
    ap.add_argument("--batch", type=int, default=16, help="images per step")
    ap.add_argument("--microbatch", type=int, default=0,
                    help="rows per forward/backward pass (0 = the whole batch)")
    ap.add_argument("--size", type=int, default=0,
                    help="image side in pixels (0: the model's input size)")
    ap.add_argument("--sparsity", type=float, default=0.9, help="share of weights masked")
    ap.add_argument("--steps", type=int, default=5, help="timed steps (after one warm-up)")
    ap.add_argument("--devices", type=int, default=1,
                    help="train data parallel over the first N devices (each pass's rows "
                    "split over the most of them that divide it)")
    args = ap.parse_args()
    if not 1 <= args.devices <= len(jax.devices()):
        raise SystemExit(f"--devices={args.devices}: this process has {len(jax.devices())} "
                         "device(s)")
    mesh = distributed.device_mesh(jax.devices()[:args.devices])
    logging.set_verbosity(logging.WARNING)
    teacher = registry.create(args.model, num_classes=10)
    student = nnx.clone(teacher)
    rng = np.random.default_rng(0)
    masks = {n: rng.random(get_layer(student, n).kernel.get_value().shape) >= args.sparsity
             for n in body_layers(student)}
    apply_masks(student, masks)
    size, channels = args.size or teacher.preprocess.input_size, len(teacher.preprocess.mean)
    images = rng.integers(0, 256, (4 * args.batch, size, size, channels), dtype=np.uint8)
    labels = rng.integers(0, 10, len(images))
    config = fit.FitConfig(steps=args.steps + 1, batch_size=args.batch, learning_rate=1e-4,
                           kd_weight=1.0, log_every=1, microbatch=args.microbatch)
    history = fit.fit(student, images, labels, config,
                      lambda x: jnp.asarray(x, jnp.float32) / 255.0, teacher=teacher,
                      constrain=lambda m: apply_masks(m, masks), mesh=mesh)
    seconds = np.diff([0.0] + [h["seconds"] for h in history])[1:]  # the first compiles
    step = statistics.median(seconds)
    macs = 4 * forward_macs(teacher, (args.batch, size, size, channels))
    used = history[-1]["devices"]
    floor = macs / (gemm_rate() * used)
    peak = peak_rss_mib() / 1024
    print(f"{args.model} batch {args.batch} microbatch {args.microbatch or args.batch} "
          f"on {used} {jax.devices()[0].device_kind} device(s) jax={jax.__version__}")
    print(f"step {step:.2f}s (median of {len(seconds)}; spread {seconds.min():.2f}-"
          f"{seconds.max():.2f}s)  FLOP floor {floor:.2f}s ({macs / 1e9:.0f} GMAC): "
          f"{step / floor:.2f}x the floor  peak RSS {peak:.2f} GiB")


if __name__ == "__main__":
    main()
