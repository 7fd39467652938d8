"""Forward latency of registered models (random weights, eval mode, float32).

    python -m taco_jax.bench.models --models=vit_small_patch16_224,resnet50 --batch_sizes=1,32

Compilation is excluded (the jitted forward is compiled and run ``--warmup`` times first); each
timed call ends with ``block_until_ready``; the median of ``--repeats`` calls is reported.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
from absl import app, flags

from taco_jax.models import create, names
from taco_jax.models.latency import model_latency

FLAGS = flags.FLAGS
flags.DEFINE_list("models", ["vit_small_patch16_224", "resnet50", "convnext_tiny"],
                  f"Registered names, comma-separated; any of: {', '.join(names())}.")
flags.DEFINE_list("batch_sizes", ["1", "32"], "Batch sizes, comma-separated positive integers.")
flags.DEFINE_integer("repeats", 10, "Timed calls per (model, batch).", lower_bound=1)
flags.DEFINE_integer("warmup", 2, "Untimed calls after compiling.", lower_bound=0)
flags.DEFINE_string("json_out", None, "Also write the results to this JSON file.")


@flags.validator("models", "every --models entry must be a registered name")
def _check_models(value: list[str]) -> bool:
    bad = [m for m in value if m not in names()]
    if bad:
        raise flags.ValidationError(f"--models: unknown {bad}; valid: {', '.join(names())}")
    return True


@flags.validator("batch_sizes", "--batch_sizes must be positive integers")
def _check_batches(value: list[str]) -> bool:
    if not all(v.isdigit() and int(v) > 0 for v in value):
        raise flags.ValidationError(f"--batch_sizes={','.join(value)}: positive integers only")
    return True


def forward_latency(name: str, batch: int, *, repeats: int = 10, warmup: int = 2) -> float:
    """Median seconds of one jitted eval forward pass of ``name`` at its own input size."""
    model = create(name, num_classes=1000)
    size, chans = model.preprocess.input_size, len(model.preprocess.mean)
    x = jax.random.normal(jax.random.key(0), (batch, size, size, chans), jnp.float32)
    return model_latency(model, x, repeats=repeats, warmup=warmup)["median"]


def main(argv: list[str]) -> None:
    del argv
    device = jax.devices()[0]
    results = []
    print(f"device: {device.device_kind} ({device.platform}), jax {jax.__version__}")
    print(f"{'model':<28}{'batch':>6}{'median ms':>12}{'img/s':>10}")
    for name in FLAGS.models:
        for batch in map(int, FLAGS.batch_sizes):
            sec = forward_latency(name, batch, repeats=FLAGS.repeats, warmup=FLAGS.warmup)
            results.append({"model": name, "batch": batch, "median_s": sec})
            print(f"{name:<28}{batch:>6}{sec * 1e3:>12.1f}{batch / sec:>10.1f}", flush=True)
    if FLAGS.json_out:
        with open(FLAGS.json_out, "w") as f:
            json.dump({"device": str(device.device_kind), "results": results}, f, indent=2)


if __name__ == "__main__":
    app.run(main)
