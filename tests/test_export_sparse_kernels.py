"""A pruned ViT on the block-sparse kernels (``export.with_sparse_kernels``) computes what the
masked dense model computes; the end-to-end benchmark's structured cut meets its weight budget."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from taco_jax import export
from taco_jax.bench import latency_variants
from taco_jax.kernels.layers import SparseLinear, SparseMLP
from taco_jax.kernels.testing import assert_close
from taco_jax.models import create
from taco_jax.models.paths import body_layers, get_layer
from taco_jax.models.stats import param_count


def _masked_vit(block=16, sparsity=0.75, **kw):
    model = create("vit_mini", num_classes=20, **kw)
    model.eval()
    nnz = latency_variants.mask_blocks(model, block, sparsity, seed=1)
    return model, nnz


def _x(batch=2):
    return jax.random.normal(jax.random.key(0), (batch, 28, 28, 1))


@pytest.mark.parametrize("path", ["dense", "triton"])
def test_sparse_kernels_compute_the_masked_model(path):
    model, _ = _masked_vit()
    want = model(_x())
    chosen = export.with_sparse_kernels(model, (16, 16), path=path, interpret=True)
    # Every MLP fused, qkv and proj as sparse linears; the head (20 outputs) left alone.
    depth = 4
    assert chosen == {**{f"blocks.{i}.mlp": path for i in range(depth)},
                      **{f"blocks.{i}.attn.{p}": path for i in range(depth)
                         for p in ("qkv", "proj")}}
    assert isinstance(get_layer(model, "blocks.2.mlp"), SparseMLP)
    assert isinstance(get_layer(model, "blocks.2.attn.qkv"), SparseLinear)
    assert isinstance(get_layer(model, "head"), nnx.Linear)
    assert_close(model(_x()), want, jnp.float32, True)


def test_on_cpu_each_layer_chooses_the_dense_path_and_untiled_layers_stay():
    model, _ = _masked_vit()
    want = model(_x())
    assert set(export.with_sparse_kernels(model, (16, 16)).values()) == {"dense"}
    np.testing.assert_allclose(model(_x()), want, rtol=1e-6, atol=1e-6)
    untouched, _ = _masked_vit()
    assert export.with_sparse_kernels(untouched, (64, 64)) == {}  # 96 wide: 64 does not tile


def test_mask_blocks_keeps_the_asked_share_of_whole_blocks():
    model, nnz = _masked_vit(sparsity=0.9)
    total = sum(m.kernel.get_value().size for m in body_layers(model, (nnx.Linear,)).values())
    assert nnz == latency_variants.weights_in(model)
    assert abs(nnz / total - 0.1) < 0.01
    k = np.asarray(get_layer(model, "blocks.0.mlp.fc1").kernel.get_value())  # (96, 384)
    blocks = k.reshape(6, 16, 24, 16).transpose(0, 2, 1, 3).reshape(144, -1)
    nonzero = np.abs(blocks).sum(1) > 0
    assert nonzero.sum() == round(0.1 * 144)  # whole blocks kept or removed
    assert np.all(blocks[nonzero] != 0)


def test_structured_cut_meets_the_budget_with_whole_heads_and_neurons():
    # 8 heads of 8, MLP 256: at 10% density one head (2,048 weights per block) and 22 neurons.
    model = create("vit_mini", num_classes=20, embed_dim=64, num_heads=8, depth=2)
    dense = latency_variants.weights_in(model)
    before = param_count(model)
    latency_variants.structured_to_density(model, 0.1)
    for i in range(2):
        assert get_layer(model, f"blocks.{i}.attn.qkv").kernel.get_value().shape == (64, 24)
        assert get_layer(model, f"blocks.{i}.attn.proj").kernel.get_value().shape == (8, 64)
        assert get_layer(model, f"blocks.{i}.mlp.fc1").kernel.get_value().shape == (64, 22)
    kept = latency_variants.weights_in(model)
    assert kept == 2 * (4 * 64 * 8 + 2 * 64 * 22)
    assert abs(kept - 0.1 * dense) < 2 * 2 * 64  # within one neuron per block of the budget
    removed_biases = 2 * (3 * 56 + 256 - 22)  # qkv outputs and fc1 outputs gone
    assert param_count(model) == before - (dense - kept) - removed_biases
    assert model(_x()).shape == (2, 20)


def test_benchmark_cli_writes_all_three_models(tmp_path):
    out = tmp_path / "e2e.json"
    run = subprocess.run(
        [sys.executable, "-m", "taco_jax.bench.sparse_vit", "--model=vit_mini", "--batch=2",
         "--block=16", "--dtype=float32", "--repeats=2", "--warmup=0", f"--json_out={out}"],
        capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    r = json.loads(out.read_text())
    assert set(r["results"]) == {"dense", "sparse", "structured"}
    assert r["results"]["dense"]["speedup"] == 1.0
    assert r["sparse_logit_rel_error"] < 1e-5  # f32, dense path on CPU
    assert set(r["layer_paths"].values()) == {"dense"} and len(r["layer_paths"]) == 12
    bad = subprocess.run([sys.executable, "-m", "taco_jax.bench.sparse_vit",
                          "--model=resnet_mini", "--batch=1"], capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode != 0 and "no attention blocks" in bad.stderr
