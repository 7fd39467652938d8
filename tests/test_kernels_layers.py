"""NNX sparse layers: same outputs as the masked dense layers, on the dense path and on the
kernel paths (interpret mode on CPU); dispatch by break-even density; swap into a model."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from taco_jax.kernels import layers
from taco_jax.kernels.bsr import expand_block_mask, random_block_mask
from taco_jax.kernels.layers import SparseLinear, SparseMLP, choose_path
from taco_jax.kernels.testing import assert_close
from taco_jax.models.paths import get_layer, set_layer

KERNEL_PATHS = ["tpu", "triton"]


def pruned_linear(d_in, d_out, block, sparsity, seed=0, use_bias=True):
    """An nnx.Linear whose kernel (d_in, d_out) is zero outside kept (block x block) blocks."""
    lin = nnx.Linear(d_in, d_out, use_bias=use_bias, rngs=nnx.Rngs(seed))
    mask = random_block_mask((d_out, d_in), (block, block), sparsity, seed=seed)
    lin.kernel.value = lin.kernel.value * expand_block_mask(mask, (block, block)).T
    if use_bias:
        lin.bias.value = jax.random.normal(jax.random.key(seed + 1), (d_out,)) * 0.1
    return lin


class Mlp(nnx.Module):
    """The models' MLP (timm names): fc2(gelu(fc1(x))), exact GELU."""

    def __init__(self, d, h, block, sparsity, seed=0):
        self.fc1 = pruned_linear(d, h, block, sparsity, seed)
        self.fc2 = pruned_linear(h, d, block, sparsity, seed + 7)

    def __call__(self, x):
        return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


class Block(nnx.Module):
    def __init__(self, d, h, seed):
        self.mlp = Mlp(d, h, 16, 0.75, seed)

    def __call__(self, x):
        return x + self.mlp(x)


class Tiny(nnx.Module):
    def __init__(self, d=32, h=64):
        self.blocks = nnx.List([Block(d, h, 0), Block(d, h, 1)])

    def __call__(self, x):
        for b in self.blocks:
            x = b(x)
        return x


def _x(shape, seed=3, dtype=jnp.float32):
    return jax.random.normal(jax.random.key(seed), shape, dtype)


@pytest.mark.parametrize("path", ["dense", *KERNEL_PATHS])
@pytest.mark.parametrize("use_bias", [True, False])
def test_sparse_linear_matches_masked_dense(path, use_bias):
    lin = pruned_linear(64, 96, 16, 0.75, use_bias=use_bias)
    x = _x((2, 9, 64))  # leading dims are kept, like nnx.Linear
    sp = SparseLinear.from_linear(lin, (16, 16), path=path, interpret=True)
    assert sp.path == path and sp.block_density == pytest.approx(0.25, abs=0.01)
    y = sp(x)
    assert y.shape == (2, 9, 96) and y.dtype == jnp.float32
    assert_close(y, lin(x), jnp.float32, True)


@pytest.mark.parametrize("path", ["dense", *KERNEL_PATHS])
def test_sparse_linear_bf16(path):
    lin = pruned_linear(128, 64, 32, 0.5)
    x = _x((20, 128))
    sp = SparseLinear.from_linear(lin, (32, 32), path=path, dtype=jnp.bfloat16, interpret=True)
    y = sp(x.astype(jnp.bfloat16))
    assert y.dtype == jnp.bfloat16
    want = lin(x.astype(jnp.bfloat16).astype(jnp.float32))
    assert_close(y, want, jnp.bfloat16, True)


def test_sparse_linear_mask_argument_and_errors():
    lin = nnx.Linear(32, 32, rngs=nnx.Rngs(0))
    mask = np.kron(random_block_mask((32, 32), (16, 16), 0.5), np.ones((16, 16))).T
    sp = SparseLinear.from_linear(lin, (16, 16), mask=mask, path="dense")
    x = _x((4, 32))
    assert_close(sp(x), x @ (lin.kernel.value * mask) + lin.bias.value, jnp.float32, True)
    with pytest.raises(ValueError, match=r"mask must have the kernel's shape \(32, 32\)"):
        SparseLinear.from_linear(lin, (16, 16), mask=mask[:8])
    with pytest.raises(TypeError, match=r"expected an nnx\.Linear"):
        SparseLinear.from_linear(nnx.LayerNorm(4, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="must be divisible by block_shape"):
        SparseLinear.from_linear(lin, (64, 64))
    with pytest.raises(ValueError, match="path must be one of"):
        SparseLinear.from_linear(lin, (16, 16), path="cuda")
    with pytest.raises(ValueError, match="takes bfloat16/float16 weights"):
        SparseLinear.from_linear(lin, (16, 16), path="mosaic_gpu")
    with pytest.raises(ValueError, match="Mosaic GPU MLP takes bfloat16/float16 weights"):
        SparseMLP.from_mlp(Mlp(32, 64, 16, 0.5), (16, 16), path="mosaic_gpu")


@pytest.mark.parametrize("path", ["dense", *KERNEL_PATHS])
def test_sparse_mlp_matches_masked_dense(path):
    mlp = Mlp(64, 256, 32, 0.75)
    x = _x((3, 7, 64))
    sp = SparseMLP.from_mlp(mlp, (32, 32), path=path, interpret=True)
    assert sp.path == path
    assert_close(sp(x), mlp(x), jnp.float32, True)


def test_swap_into_model_and_jit():
    model = Tiny()
    x = _x((2, 5, 32))
    want = model(x)
    set_layer(model, "blocks.0.mlp", SparseMLP.from_mlp(get_layer(model, "blocks.0.mlp"),
                                                        (16, 16), path="triton", interpret=True))
    set_layer(model, "blocks.1.mlp.fc1", SparseLinear.from_linear(
        get_layer(model, "blocks.1.mlp.fc1"), (16, 16), path="tpu", interpret=True))
    set_layer(model, "blocks.1.mlp.fc2", SparseLinear.from_linear(
        get_layer(model, "blocks.1.mlp.fc2"), (16, 16)))  # auto: dense on CPU
    assert get_layer(model, "blocks.1.mlp.fc2").path == "dense"
    y = nnx.jit(lambda m, x: m(x))(model, x)
    assert_close(y, want, jnp.float32, True)


def test_choose_path_by_break_even():
    assert choose_path(0.1, "linear", "cpu", "cpu") == "dense"
    assert choose_path(0.1, "linear", "gpu", "NVIDIA H100 80GB HBM3") == "triton"
    assert choose_path(0.9, "linear", "gpu", "NVIDIA H100 80GB HBM3") == "dense"
    assert choose_path(0.1, "mlp", "tpu", "TPU v5e") == "tpu"
    assert choose_path(0.2, "linear", "tpu", "TPU v5e") == "tpu"
    assert choose_path(0.2, "mlp", "tpu", "TPU v5e") == "dense"  # safe defaults until measured
    assert choose_path(0.3, "linear", "gpu", "NVIDIA H100 80GB HBM3") == "dense"
    table = layers.DispatchTable("NVIDIA H100 80GB HBM3",
                                 layers.BreakEven(linear=0.6, mlp=0.7, gpu_path="mosaic_gpu"))
    assert choose_path(0.55, "linear", "gpu", "NVIDIA H100 80GB HBM3", table) == "mosaic_gpu"
    assert choose_path(0.65, "mlp", "gpu", "NVIDIA H100 80GB HBM3", table) == "mosaic_gpu"
    with pytest.raises(ValueError, match="op must be 'linear' or 'mlp'"):
        choose_path(0.5, "conv", "gpu", "x")


def test_dispatch_tables_are_immutable_data(tmp_path):
    with pytest.raises(TypeError):
        layers.DEFAULT_BREAK_EVEN["gpu"] = layers.BreakEven(1.0, 1.0)
    table = layers.DispatchTable.for_device("gpu", "Fake GPU")
    with pytest.raises(dataclasses.FrozenInstanceError):
        table.break_even = layers.BreakEven(1.0, 1.0)
    bad = tmp_path / "be.json"
    bad.write_text('{"Fake GPU": {"linear": 0.3, "mlp": 0.8}}')  # not a measurement file
    with pytest.raises(ValueError, match="is not a dispatch measurement"):
        layers.DispatchTable.from_json(bad)


def test_sparse_linear_mosaic_gpu_path_interpret():
    """The Mosaic GPU path of the layer, through the CPU Mosaic GPU interpreter (bf16)."""
    from taco_jax.kernels.sparse_linear.kernel_gpu import BlockSizes

    lin = pruned_linear(64, 128, 32, 0.5)
    x = _x((2, 40, 64))
    sp = SparseLinear.from_linear(lin, (32, 32), path="mosaic_gpu", dtype=jnp.bfloat16,
                                  interpret=True, block_sizes=BlockSizes(64, 2, 1, False))
    y = sp(x.astype(jnp.bfloat16))
    assert y.shape == (2, 40, 128)
    assert_close(y, lin(x.astype(jnp.bfloat16).astype(jnp.float32)), jnp.bfloat16, True)


def test_auto_mosaic_gpu_falls_back_to_triton_for_f32(monkeypatch):
    monkeypatch.setattr(layers, "choose_path", lambda *a, **k: "mosaic_gpu")
    lin = pruned_linear(32, 32, 16, 0.5)
    assert SparseLinear.from_linear(lin, (16, 16)).path == "triton"
    assert SparseLinear.from_linear(lin, (16, 16), dtype=jnp.bfloat16).path == "mosaic_gpu"
    mlp = Mlp(32, 64, 16, 0.5)
    assert SparseMLP.from_mlp(mlp, (16, 16)).path == "triton"
    assert SparseMLP.from_mlp(mlp, (16, 16), dtype=jnp.bfloat16).path == "mosaic_gpu"


def test_sparse_mlp_mosaic_gpu_path_interpret():
    """The fused Mosaic GPU MLP behind the layer, in the CPU Mosaic GPU interpreter (bf16)."""
    mlp = Mlp(64, 128, 16, 0.75)
    x = _x((2, 20, 64))
    sp = SparseMLP.from_mlp(mlp, (16, 16), path="mosaic_gpu", dtype=jnp.bfloat16,
                            interpret=True)
    y = sp(x.astype(jnp.bfloat16))
    assert y.shape == (2, 20, 64) and y.dtype == jnp.bfloat16
    assert_close(y, mlp(x.astype(jnp.bfloat16).astype(jnp.float32)), jnp.bfloat16, True)


def test_layers_use_tuned_tiles(tmp_path):
    """A measurement's tiles: the nearest sparsity for its device kind wins."""
    import json

    from taco_jax.kernels.sparse_linear.kernel_triton import BlockSizes

    kind = layers._device()[1]
    rec = dict(device_kind=kind, kernel="triton", op="linear", dtype="float32", tokens=64,
               dims=[96, 64], block=16, sparse_ms=1.0)
    recs = [{**rec, "sparsity_pct": 75.0, "block_sizes": dict(block_t=32, num_warps=8,
                                                              num_stages=3)},
            {**rec, "sparsity_pct": 0.0, "block_sizes": dict(block_t=64, num_warps=4,
                                                             num_stages=2)},
            {**rec, "device_kind": "other", "sparsity_pct": 75.0,
             "block_sizes": dict(block_t=128, num_warps=4, num_stages=2)}]
    f = tmp_path / "dispatch.json"
    f.write_text(json.dumps({"device_kind": kind, "tiles": recs,
                             "break_even": {"linear": 0.0, "mlp": 0.0, "gpu_path": "triton"}}))
    table = layers.DispatchTable.from_json(f)
    lin = pruned_linear(64, 96, 16, 0.75)
    sp = SparseLinear.from_linear(lin, (16, 16), path="triton", interpret=True, table=table)
    assert sp.block_sizes == BlockSizes(32, 8, 3)
    assert_close(sp(_x((5, 64))), lin(_x((5, 64))), jnp.float32, True)
    assert SparseLinear.from_linear(lin, (16, 16), path="triton", interpret=True
                                    ).block_sizes is None  # this device's table has no tiles
    assert SparseLinear.from_linear(lin, (16, 16), path="tpu", interpret=True,
                                    table=table).block_sizes is None


def test_measured_table_is_loaded_for_its_device_kind(tmp_path, monkeypatch):
    """A committed device-check file decides the path of its device kind only; a table passed
    in wins over it; its tiles are found."""
    import json

    from taco_jax.kernels.sparse_linear.kernel_triton import BlockSizes

    (tmp_path / "fake_gpu.json").write_text(json.dumps({
        "device_kind": "Fake GPU 9", "break_even": {"linear": 0.6, "mlp": 0.3,
                                                    "gpu_path": "mosaic_gpu"},
        "tiles": [dict(device_kind="Fake GPU 9", kernel="triton", op="linear",
                       dtype="bfloat16", tokens=4096, dims=[256, 128], block=64,
                       sparsity_pct=90.0, block_sizes=dict(block_t=128, num_warps=8,
                                                           num_stages=4), sparse_ms=0.1)]}))
    monkeypatch.setattr(layers, "MEASURED_DIR", tmp_path)
    layers._measured_files.cache_clear()
    layers._device_table.cache_clear()
    try:
        assert choose_path(0.5, "linear", "gpu", "Fake GPU 9") == "mosaic_gpu"
        assert choose_path(0.5, "mlp", "gpu", "Fake GPU 9") == "dense"
        assert choose_path(0.5, "linear", "gpu", "Other GPU") == "dense"  # defaults: 0.25
        table = layers.DispatchTable.for_device("gpu", "Fake GPU 9")
        assert table.tuned_block_sizes("triton", "linear", jnp.bfloat16, (256, 128), 64,
                                       0.1) == BlockSizes(128, 8, 4)
        with pytest.raises(TypeError):
            table.tiles[0]["block"] = 32  # read-only records
        other = layers.DispatchTable("Fake GPU 9", layers.BreakEven(linear=0.1, mlp=0.1))
        assert choose_path(0.5, "linear", "gpu", "Fake GPU 9", other) == "dense"
    finally:
        layers._measured_files.cache_clear()
        layers._device_table.cache_clear()
