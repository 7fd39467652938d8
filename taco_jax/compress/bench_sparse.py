r"""End-to-end inference latency of a ViT exported for the block-sparse kernels, vs dense.

  python -m taco_jax.compress.bench_sparse                       # ViT-B/16, batch 64, 90% of
                                                                 # 64x64 blocks, bf16 (GPU)
  python -m taco_jax.compress.bench_sparse --dtype=float32 --path=triton
  python -m taco_jax.compress.bench_sparse --model=vit_mini --batch=8 --block=16 --path=dense

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

Before timing, the sparse model's logits are checked against the masked dense model's (the run
stops if they differ by more than the dtype's tolerance). The models are compiled ahead of time,
warmed up, then timed call by call in turn (``models.latency.interleaved_latency``: each call ends
with ``block_until_ready``); the speedup is the median over repeats of dense time / model time.
"""

from __future__ import annotations

import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from taco_jax.compress import export
from taco_jax.kernels import layers as kernel_layers
from taco_jax.kernels.bsr import expand_block_mask, random_block_mask
from taco_jax.models import create, names
from taco_jax.models.latency import interleaved_latency
from taco_jax.models.layers import Mlp
from taco_jax.models.paths import named_layers
from taco_jax.models.stats import param_count
from taco_jax.models.vit import Attention
from taco_jax.prune.shrink import ShrinkPair, shrink_pair

TOLERANCE = {"float32": 1e-2, "bfloat16": 5e-2}  # relative Frobenius error of the logits

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
_BREAK_EVEN = flags.DEFINE_string("break_even", None, "Measured break-even densities from "
                                  "`python -m kernels.bench --break_even_out=FILE` (else the "
                                  "defaults in kernels/layers.py).")
_TILES = flags.DEFINE_string("tuned_tiles", None, "Autotuned kernel tiles from "
                             "`python -m kernels.bench --autotune --tuned_out=FILE`.")
_REPEATS = flags.DEFINE_integer("repeats", 20, "Timed calls per model; medians are reported.",
                                lower_bound=1)
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed calls per model after compiling.",
                               lower_bound=0)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the weights, block masks and input.")
_JSON = flags.DEFINE_string("json_out", None, "Also write the results to this JSON file.")


def block_linears(model: nnx.Module) -> dict[str, nnx.Linear]:
    """The Linears the sparse and structured variants shrink: all but ``model.head_name``."""
    head = getattr(model, "head_name", None)
    return {n: m for n, m in named_layers(model, (nnx.Linear,)).items() if n != head}


def mask_blocks(model: nnx.Module, block: int, sparsity: float, seed: int = 0) -> int:
    """Zero a random ``sparsity`` of each block Linear's (block x block) weight blocks in place
    (layers the block does not tile stay dense). Returns the non-zero weights left in them."""
    nnz = 0
    for i, lin in enumerate(block_linears(model).values()):
        k = np.asarray(lin.kernel.get_value())  # (d_in, d_out)
        if k.shape[0] % block == 0 and k.shape[1] % block == 0:
            keep = random_block_mask(k.shape[::-1], (block, block), sparsity, seed=seed + i)
            k = k * expand_block_mask(keep, (block, block)).T
            lin.kernel.set_value(jnp.asarray(k))
        nnz += int(np.count_nonzero(k))
    return nnz


def structured_to_density(model: nnx.Module, density: float) -> None:
    """Cut every transformer block to ``density`` of its Linear weights, in place: the first
    ``round(density·heads)`` heads (at least one), then as many MLP neurons as the rest of the
    budget allows (at least one).

    Which heads/neurons survive does not matter for latency; to keep the *best* ones, prune with
    the structured second-order pattern instead (``prune_model(..., pattern="structured")``).
    """
    mlps = named_layers(model, (Mlp,))
    for name, attn in named_layers(model, (Attention,)).items():
        block = name.rsplit(".", 1)[0]
        mlp = mlps.get(f"{block}.mlp")
        if mlp is None:
            raise ValueError(f"{block} has attention but no Mlp named {block}.mlp")
        dim, hd = attn.proj.out_features, attn.head_dim
        heads, hidden = attn.proj.in_features // hd, mlp.fc1.out_features
        budget = density * (4 * dim * heads * hd + 2 * dim * hidden)
        keep_heads = min(heads, max(1, round(density * heads)))
        keep_neurons = int(np.clip(round((budget - 4 * dim * keep_heads * hd) / (2 * dim)),
                                   1, hidden))
        shrink_pair(model, ShrinkPair(f"{name}.proj", (f"{name}.qkv",), group_size=hd, repeat=3),
                    np.arange(keep_heads * hd))
        shrink_pair(model, ShrinkPair(f"{block}.mlp.fc2", (f"{block}.mlp.fc1",)),
                    np.arange(keep_neurons))


def cast_params(model: nnx.Module, dtype: Any) -> None:
    """Every floating-point ``nnx.Param`` of the model to ``dtype``, in place."""
    state = nnx.state(model, nnx.Param)
    nnx.update(model, jax.tree.map(
        lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, state))


def relative_error(y: jax.Array, ref: jax.Array) -> float:
    """‖y − ref‖ / ‖ref‖ in float64."""
    y, ref = np.asarray(y, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(y - ref) / max(np.linalg.norm(ref), 1e-30))


def weights_in(model: nnx.Module) -> int:
    """Non-zero kernel weights of the block Linears (biases not counted)."""
    return sum(int(np.count_nonzero(np.asarray(m.kernel.get_value())))
               for m in block_linears(model).values())


def build(model_name: str, *, batch: int, sparsity: float, block: int, dtype: Any,
          path: str | None, interpret: bool, structured: bool, seed: int = 0
          ) -> tuple[dict[str, nnx.Module], jax.Array, dict]:
    """The dense, sparse (and structured) models and a random input batch (B, H, W, C) in
    ``dtype``, plus facts for the report: layer paths, parameter counts, the logit check."""
    base = create(model_name, num_classes=1000, rngs=nnx.Rngs(seed))
    base.eval()
    if not named_layers(base, (Attention,)):
        raise ValueError(f"{model_name} has no attention blocks; this benchmark takes a "
                         "ViT/DeiT (timm layout)")
    size, chans = base.preprocess.input_size, len(base.preprocess.mean)
    x = jax.random.normal(jax.random.key(seed), (batch, size, size, chans), jnp.float32)
    dense_weights = weights_in(base)

    masked = nnx.clone(base)
    nnz = mask_blocks(masked, block, sparsity, seed)
    reference = masked(x)  # float32 masked dense: what the sparse model must compute
    sparse = nnx.clone(masked)
    paths = export.with_sparse_kernels(sparse, (block, block), dtype=dtype, path=path,
                                       interpret=interpret)
    cast_params(sparse, dtype)
    err = relative_error(nnx.jit(lambda m, x: m(x))(sparse, x.astype(dtype)), reference)
    if err > TOLERANCE[jnp.dtype(dtype).name]:
        raise RuntimeError(f"sparse model's logits differ from the masked dense model's by "
                           f"{err:.2e} (relative); expected <= {TOLERANCE[jnp.dtype(dtype).name]}")
    dense = nnx.clone(base)
    cast_params(dense, dtype)
    models = {"dense": dense, "sparse": sparse}
    facts = {"block_weights": {"dense": dense_weights, "sparse_nonzero": nnz},
             "params": {"dense": param_count(base)}, "layer_paths": paths,
             "sparse_logit_rel_error": err}
    if structured:
        cut = nnx.clone(base)
        structured_to_density(cut, nnz / dense_weights)
        facts["block_weights"]["structured"] = weights_in(cut)
        facts["params"]["structured"] = param_count(cut)
        cast_params(cut, dtype)
        models["structured"] = cut
    return models, x.astype(dtype), facts


def time_models(models: dict[str, nnx.Module], x: jax.Array, *, repeats: int, warmup: int
                ) -> dict[str, dict]:
    """Interleaved latency of every model; speedup = median over repeats of dense / model."""
    out = interleaved_latency(list(models.values()), x, repeats=repeats, warmup=warmup)
    dense_t = np.asarray(out[0]["times"])
    return {name: {"median_ms": 1e3 * r["median"], "min_ms": 1e3 * r["min"],
                   "max_ms": 1e3 * r["max"],
                   "speedup": float(np.median(dense_t / np.asarray(r["times"])))}
            for name, r in zip(models, out, strict=True)}


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _MODEL.value not in names():
        raise app.UsageError(f"--model={_MODEL.value}: not registered; one of {names()}")
    if _BREAK_EVEN.value:
        kernel_layers.load_break_even(_BREAK_EVEN.value)
    if _TILES.value:
        kernel_layers.load_tuned_tiles(_TILES.value)
    dtype = jnp.dtype(_DTYPE.value)
    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({device.platform}), jax {jax.__version__}")
    print(f"{_MODEL.value}, batch {_BATCH.value}, {_DTYPE.value}, "
          f"{100 * _SPARSITY.value:g}% of {_BLOCK.value}x{_BLOCK.value} blocks removed")
    try:
        models, x, facts = build(
            _MODEL.value, batch=_BATCH.value, sparsity=_SPARSITY.value, block=_BLOCK.value,
            dtype=dtype, path=None if _PATH.value == "auto" else _PATH.value,
            interpret=_INTERPRET.value, structured=_STRUCTURED.value, seed=_SEED.value)
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
