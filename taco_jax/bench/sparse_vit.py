r"""End-to-end inference latency of a ViT exported for the block-sparse kernels, vs dense.

  python -m taco_jax.bench.sparse_vit                       # ViT-B/16, batch 64, 90% of
                                                                 # 64x64 blocks, bf16 (GPU)
  python -m taco_jax.bench.sparse_vit --dtype=float32 --path=triton
  python -m taco_jax.bench.sparse_vit --model=vit_mini --batch=8 --block=16 --path=dense

Three models from the same random weights (latency does not depend on the weight values):

- ``dense``: the model as built;
- ``sparse``: every Linear but the head keeps a random ``1 - sparsity`` of its ``block``x``block``
  weight blocks, and ``export.with_sparse_kernels`` runs it (each MLP as the fused sparse MLP
  kernel, qkv and proj as the sparse linear kernel; ``--path=auto`` lets each layer choose by the
  device's break-even density, as exported TACO models do);
- ``structured``: whole heads and MLP neurons removed, so the blocks' Linears hold as many
  weights as the sparse model keeps (``(1 - sparsity)·heads`` heads, rounded, at least one;
  neurons for the rest of the budget): smaller dense shapes, what structured pruning gives at
  the same parameter count.

The variants are built by ``taco_jax.bench.latency_variants`` (importable without this CLI's
flags). Before timing, the sparse model's logits are checked against the masked dense model's
(the run stops if they differ by more than the dtype's tolerance). The models are compiled
ahead of time, warmed up, then timed call by call in turn (``models.latency.interleaved_latency``:
each call ends with ``block_until_ready``), each model right after a dense call; the speedup is
1 / (1 − the median over repeats of model time / the dense time just before it).
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
from absl import app, flags

from taco_jax.bench.latency_variants import TOLERANCE, build, time_models
from taco_jax.kernels import layers as kernel_layers

_MODEL = flags.DEFINE_string("model", "vit_base_patch16_224",
                             "Registered ViT/DeiT name (the timm layout: blocks.i.attn/mlp).")
_BATCH = flags.DEFINE_integer("batch", 64, "Images per forward call.", lower_bound=1)
_SPARSITY = flags.DEFINE_float("sparsity", 0.9, "Fraction of each Linear's weight blocks removed "
                               "(all Linears but the head).", lower_bound=0.0, upper_bound=0.99)
_BLOCK = flags.DEFINE_integer("block", 64, "Square weight block size of the sparse model.",
                              lower_bound=1)
_DTYPE = flags.DEFINE_enum("dtype", "bfloat16", list(TOLERANCE),
                           "Weights and activations of all three models (f32 accumulate).")
_PATH = flags.DEFINE_enum("path", "auto", ["auto", *kernel_layers.PATHS],
                          "Compute path of every sparse layer; 'auto' = each layer chooses by "
                          "block density and the device's break-even (dense on CPU).")
_INTERPRET = flags.DEFINE_bool("interpret", False, "Run the Pallas kernels in interpret mode "
                               "(CPU correctness runs; timings then mean nothing).")
_STRUCTURED = flags.DEFINE_bool("structured", True, "Also time the structured model (heads and "
                                "neurons removed to the same parameter count).")
_DISPATCH = flags.DEFINE_string("dispatch_table", None, "A dispatch measurement (break-even "
                                "densities and tiles): the device check's measured.json or "
                                "`python -m taco_jax.kernels.bench --dispatch_out=FILE`. "
                                "Default: this device's committed file under kernels/measured/, "
                                "else the safe defaults of kernels/layers.py.")
_REPEATS = flags.DEFINE_integer("repeats", 20, "Timed calls per model; medians are reported.",
                                lower_bound=1)
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed calls per model after compiling.",
                               lower_bound=0)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the weights, block masks and input.")
_JSON = flags.DEFINE_string("json_out", None, "Also write the results to this JSON file.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    table = (kernel_layers.DispatchTable.from_json(_DISPATCH.value) if _DISPATCH.value
             else None)
    dtype = jnp.dtype(_DTYPE.value)
    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({device.platform}), jax {jax.__version__}")
    print(f"{_MODEL.value}, batch {_BATCH.value}, {_DTYPE.value}, "
          f"{100 * _SPARSITY.value:g}% of {_BLOCK.value}x{_BLOCK.value} blocks removed")
    try:
        models, x, facts = build(
            _MODEL.value, batch=_BATCH.value, sparsity=_SPARSITY.value, block=_BLOCK.value,
            dtype=dtype, path=None if _PATH.value == "auto" else _PATH.value,
            interpret=_INTERPRET.value, structured=_STRUCTURED.value, seed=_SEED.value,
            table=table)
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    chosen = list(facts["layer_paths"].values())
    by_path = ", ".join(f"{p}: {chosen.count(p)}" for p in sorted(set(chosen)))
    print(f"sparse layers: {len(chosen)} ({by_path}); logits vs masked dense: "
          f"{facts['sparse_logit_rel_error']:.1e} relative")
    results = time_models(models, x, repeats=_REPEATS.value, warmup=_WARMUP.value)
    print(f"{'model':<12}{'block weights':>15}{'median ms':>12}{'min ms':>10}{'speedup':>10}")
    weights = {"dense": facts["block_weights"]["dense"],
               "sparse": facts["block_weights"]["sparse_nonzero"],
               "structured": facts["block_weights"].get("structured")}
    for name, r in results.items():
        print(f"{name:<12}{weights[name]:>15,}{r['median_ms']:>12.2f}{r['min_ms']:>10.2f}"
              f"{r['speedup']:>9.2f}x")
    if _JSON.value:
        record = {"device": device.device_kind, "platform": device.platform,
                  "jax": jax.__version__, "model": _MODEL.value, "batch": _BATCH.value,
                  "dtype": _DTYPE.value, "sparsity": _SPARSITY.value, "block": _BLOCK.value,
                  "path": _PATH.value, "repeats": _REPEATS.value, "warmup": _WARMUP.value,
                  **facts, "results": results}
        with open(_JSON.value, "w") as f:
            json.dump(record, f, indent=2)


if __name__ == "__main__":
    app.run(main)
