"""Same-weight variants of a ViT for end-to-end latency: dense, block-sparse on the kernels, and
structured (heads and neurons removed to the same weight count). ``sparse_vit`` is the CLI.

Latency does not depend on the weight values, so the variants are cut from random weights: the
sparse one keeps a random share of whole blocks, the structured one the first heads and neurons.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from taco_jax import export
from taco_jax.kernels.bsr import expand_block_mask, random_block_mask
from taco_jax.kernels.layers import DispatchTable
from taco_jax.models import create
from taco_jax.models.latency import paired_latency
from taco_jax.models.layers import Mlp
from taco_jax.models.paths import body_layers, named_layers
from taco_jax.models.shrink import infer_pairs, shrink_pair
from taco_jax.models.stats import param_count
from taco_jax.models.vit import Attention

TOLERANCE = {"float32": 1e-2, "bfloat16": 5e-2}  # relative Frobenius error of the logits


def mask_blocks(model: nnx.Module, block: int, sparsity: float, seed: int = 0) -> int:
    """Zero a random ``sparsity`` of each block Linear's (block x block) weight blocks in place
    (layers the block does not tile stay dense). Returns the non-zero weights left in them."""
    nnz = 0
    for i, lin in enumerate(body_layers(model, (nnx.Linear,)).values()):
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
    pairs = {p.consumer: p for p in infer_pairs(model)}  # qkv→proj by heads, fc1→fc2
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
        shrink_pair(model, pairs[f"{name}.proj"], np.arange(keep_heads * hd))
        shrink_pair(model, pairs[f"{block}.mlp.fc2"], np.arange(keep_neurons))


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
               for m in body_layers(model, (nnx.Linear,)).values())


def build(model_name: str, *, batch: int, sparsity: float, block: int, dtype: Any,
          path: str | None, interpret: bool, structured: bool, seed: int = 0,
          table: DispatchTable | None = None) -> tuple[dict[str, nnx.Module], jax.Array, dict]:
    """The dense, sparse (and structured) models and a random input batch (B, H, W, C) in
    ``dtype``, plus facts for the report: layer paths, parameter counts, the logit check.
    ``table``: where the sparse layers dispatch (None: this device's)."""
    base = create(model_name, num_classes=1000, rngs=nnx.Rngs(seed))
    base.eval()
    if not named_layers(base, (Attention,)):
        raise ValueError(f"{model_name} has no attention blocks; this benchmark takes a "
                         "ViT/DeiT (timm layout)")
    size, chans = base.preprocess.input_size, len(base.preprocess.mean)
    x = jax.random.normal(jax.random.key(seed), (batch, size, size, chans), jnp.float32)
    x_run = x.astype(dtype)
    dense_weights = weights_in(base)

    masked = nnx.clone(base)
    nnz = mask_blocks(masked, block, sparsity, seed)
    reference = masked(x)  # float32 masked dense: what the sparse model must compute
    sparse = nnx.clone(masked)
    paths = export.with_sparse_kernels(sparse, (block, block), dtype=dtype, path=path,
                                       interpret=interpret, table=table)
    cast_params(sparse, dtype)
    err = relative_error(nnx.jit(lambda m, x: m(x))(sparse, x_run), reference)
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
    return models, x_run, facts


def time_models(models: dict[str, nnx.Module], x: jax.Array, *, repeats: int, warmup: int
                ) -> dict[str, dict]:
    """Each model timed right after a call of the first (dense) one, in one interleaved session
    (``models.latency.paired_latency``); speedup = 1 / (1 − its latency reduction)."""
    dense, *others = models.values()
    lats = paired_latency(dense, others, x, repeats=repeats, warmup=warmup)
    out = {next(iter(models)): {"median_ms": 1e3 * lats[0]["dense"],
                                "min_ms": 1e3 * lats[0]["dense_min"], "speedup": 1.0}}
    for name, lat in zip(list(models)[1:], lats, strict=True):
        out[name] = {"median_ms": 1e3 * lat["compressed"], "min_ms": 1e3 * lat["compressed_min"],
                     "speedup": 1.0 / (1.0 - lat["reduction"])}
    return out
