"""NNX sparse layers: drop-in replacements for a pruned ``nnx.Linear`` and a pruned MLP.

Built on the host from the pruned dense layer, they pick their compute path once, at
construction (``choose_path``): the block-sparse Pallas kernel on a GPU/TPU when the layer's
block density is below the break-even density of that device and op, else the masked dense
matmul (always on CPU, where the kernels only run interpreted). A layer stores only what its path
needs (BSR blocks or the masked dense kernel), as non-trainable ``SparseWeight`` variables.

Swap one into a model by name::

    from taco_jax.kernels.layers import SparseLinear, SparseMLP
    from taco_jax.models.paths import get_layer, set_layer
    fc1 = get_layer(model, "blocks.3.mlp.fc1")
    set_layer(model, "blocks.3.mlp.fc1", SparseLinear.from_linear(fc1, (64, 64)))
    set_layer(model, "blocks.3.mlp", SparseMLP.from_mlp(get_layer(model, "blocks.3.mlp")))

Dispatch: a ``DispatchTable`` (immutable) holds one device kind's break-even block densities and
autotuned tiles. By default a layer uses its device's (``DispatchTable.for_device``: the device
check's file committed under ``kernels/measured/``, else the safe ``DEFAULT_BREAK_EVEN``); pass
``table=DispatchTable.from_json(FILE)`` to use another measurement. A layer built without
``block_sizes`` uses the table's tiles for its kernel, dims and block.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import os
import pathlib
import types
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .bsr import BSR, bsr_from_dense
from .sparse_mlp.weights import SparseMLPWeights, mlp_weights_from_dense

PATHS = ("dense", "tpu", "triton", "mosaic_gpu")


class SparseWeight(nnx.Variable):
    """Frozen weights of a sparse layer (not an ``nnx.Param``: no gradient flows through the
    kernels; prune and fine-tune the dense model, then convert)."""


@dataclasses.dataclass(frozen=True)
class BreakEven:
    """Use the kernel when block density < ``linear`` (sparse linear) or ``mlp`` (fused MLP);
    ``gpu_path`` picks the GPU lowering ('triton' or 'mosaic_gpu')."""

    linear: float
    mlp: float
    gpu_path: str = "triton"


# Defaults for a device kind no check has measured. No kernel of ours has run on a GPU yet, and a
# read of the kernels (2026-12-04) expects well under the roofline's speedups, so they are chosen
# to be safe rather than hopeful: the kernel only where a quarter (linear) or 15% (fused MLP, with
# more per-tile overhead) of the blocks or fewer remain. Keyed by platform; read-only.
DEFAULT_BREAK_EVEN: types.MappingProxyType = types.MappingProxyType({
    "gpu": BreakEven(linear=0.25, mlp=0.15, gpu_path="triton"),
    "tpu": BreakEven(linear=0.25, mlp=0.15),
    "cpu": BreakEven(linear=0.0, mlp=0.0),  # never: kernels are interpret-only on CPU
})

# The device check's measurements (``python -m taco_jax.bench.device_check``), one JSON file
# per device kind: {"device_kind", "jax", "date", "command", "break_even": {linear, mlp,
# gpu_path}, "tiles": [BlockSizes records as ``taco_jax.kernels.bench --dispatch_out`` writes]}.
MEASURED_DIR = pathlib.Path(__file__).resolve().parent / "measured"


@dataclasses.dataclass(frozen=True)
class DispatchTable:
    """Where a sparse layer runs on one device kind: the break-even block densities (kernel below
    them, dense XLA above) and the autotuned tiles (BlockSizes records). Immutable data: from a
    measurement file (``from_json``), the committed file of the device (``for_device``), or the
    platform's safe defaults."""

    device_kind: str
    break_even: BreakEven
    tiles: tuple[types.MappingProxyType, ...] = ()

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> DispatchTable:
        """A measurement file (the device check's ``measured.json``, or one committed under
        ``kernels/measured/``)."""
        table = json.loads(pathlib.Path(path).read_text())
        missing = {"device_kind", "break_even"} - set(table)
        if missing or not table["break_even"]:
            raise ValueError(f"{path} is not a dispatch measurement (needs device_kind and "
                             f"break_even; missing {sorted(missing) or ['break_even']})")
        return cls(table["device_kind"], BreakEven(**table["break_even"]),
                   tuple(types.MappingProxyType(r) for r in table.get("tiles", ())))

    @classmethod
    def for_device(cls, platform: str, device_kind: str) -> DispatchTable:
        """The committed measurement of this device kind, else the platform's defaults (read
        once per process; every layer built after shares it)."""
        return _device_table(platform, device_kind)

    def tuned_block_sizes(self, path: str, op: str, dtype: Any, dims: tuple[int, int],
                          block: int, block_density: float) -> Any:
        """The autotuned BlockSizes for this kernel path, op, dtype, layer dims and block
        (nearest measured sparsity, then the most tokens), or None if none was measured."""
        cands = [r for r in self.tiles
                 if r["device_kind"] == self.device_kind and r["kernel"] == path
                 and r["op"] == op and r["dtype"] == jnp.dtype(dtype).name
                 and tuple(r["dims"]) == tuple(dims) and r["block"] == block]
        if not cands:
            return None
        sparsity = 100.0 * (1.0 - block_density)
        best = min(cands, key=lambda r: (abs(r["sparsity_pct"] - sparsity), -r["tokens"]))
        module = {"linear": {"tpu": "sparse_linear.kernel_tpu",
                             "triton": "sparse_linear.kernel_triton",
                             "mosaic_gpu": "sparse_linear.kernel_gpu"},
                  "mlp": {"tpu": "sparse_mlp.kernel_tpu", "triton": "sparse_mlp.kernel_triton",
                          "mosaic_gpu": "sparse_mlp.kernel_gpu"}}
        mod = importlib.import_module(f"{__package__}.{module[op][path]}")
        return mod.BlockSizes(**best["block_sizes"])


@functools.cache
def _measured_files() -> types.MappingProxyType:
    """{device kind: committed measurement file}, read once."""
    files = {}
    for path in sorted(MEASURED_DIR.glob("*.json")):
        files[json.loads(path.read_text()).get("device_kind")] = path
    return types.MappingProxyType(files)


@functools.cache
def _device_table(platform: str, device_kind: str) -> DispatchTable:
    measured = _measured_files().get(device_kind)
    if measured is not None:
        return DispatchTable.from_json(measured)
    return DispatchTable(device_kind,
                         DEFAULT_BREAK_EVEN.get(platform, DEFAULT_BREAK_EVEN["cpu"]))


def _device() -> tuple[str, str]:
    d = jax.devices()[0]
    return d.platform, d.device_kind


def choose_path(block_density: float, op: str, platform: str | None = None,
                device_kind: str | None = None, table: DispatchTable | None = None) -> str:
    """'dense' or the kernel path ('tpu', 'triton', 'mosaic_gpu') for a layer of this block
    density; ``op`` is 'linear' or 'mlp'. ``table`` None: this device's
    (``DispatchTable.for_device``: measured if committed, else the safe defaults)."""
    if op not in ("linear", "mlp"):
        raise ValueError(f"op must be 'linear' or 'mlp', got {op!r}")
    if platform is None:
        platform, device_kind = _device()
    table = table or DispatchTable.for_device(platform, device_kind or "")
    if block_density >= getattr(table.break_even, op):
        return "dense"
    if platform == "gpu":
        return table.break_even.gpu_path
    return "tpu" if platform == "tpu" else "dense"


def _check_path(path: str) -> str:
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    return path


def _linear_kernel(path: str):
    if path == "tpu":
        from .sparse_linear.kernel_tpu import sparse_linear_tpu
        return sparse_linear_tpu
    if path == "triton":
        from .sparse_linear.kernel_triton import sparse_linear_triton
        return sparse_linear_triton
    from .sparse_linear.kernel_gpu import sparse_linear_gpu
    return sparse_linear_gpu


def _mlp_kernel(path: str):
    if path == "tpu":
        from .sparse_mlp.kernel_tpu import sparse_mlp_tpu
        return sparse_mlp_tpu
    if path == "triton":
        from .sparse_mlp.kernel_triton import sparse_mlp_triton
        return sparse_mlp_triton
    from .sparse_mlp.kernel_gpu import sparse_mlp_gpu
    return sparse_mlp_gpu


def _dense_weight(linear: nnx.Linear, mask: Any | None) -> tuple[np.ndarray, np.ndarray]:
    """Pruned nnx.Linear -> (W (d_out, d_in), bias (d_out,)) on the host, mask applied."""
    if not isinstance(linear, nnx.Linear):
        raise TypeError(f"expected an nnx.Linear, got {type(linear).__name__}")
    kernel = np.asarray(linear.kernel.value)  # (d_in, d_out)
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != kernel.shape:
            raise ValueError(f"mask must have the kernel's shape {kernel.shape} (d_in, d_out), "
                             f"got {mask.shape}")
        kernel = np.where(mask != 0, kernel, np.zeros((), kernel.dtype))
    bias = (np.asarray(linear.bias.value) if linear.bias is not None
            else np.zeros(kernel.shape[1], kernel.dtype))
    return kernel.T, bias


def _kernel_kwargs(block_sizes: Any, interpret: bool) -> dict:
    kw: dict = {"interpret": interpret}
    if block_sizes is not None:
        kw["block_sizes"] = block_sizes
    return kw


class SparseLinear(nnx.Module):
    """``y = x @ W_maskedᵀ + b`` for x (..., d_in) -> (..., d_out): an ``nnx.Linear`` stand-in.

    Compute runs in ``dtype`` (the weights' dtype); the output has x's dtype promoted with it.
    """

    def __init__(self, w: np.ndarray, bias: np.ndarray | None, block_shape: tuple[int, int],
                 *, dtype: Any = None, path: str | None = None, block_sizes: Any = None,
                 interpret: bool = False, table: DispatchTable | None = None):
        """w (d_out, d_in) masked dense weight; bias (d_out,) or None. ``path=None`` chooses by
        block density (``choose_path`` with ``table``, None: this device's); pass
        'dense'/'tpu'/'triton'/'mosaic_gpu' to force."""
        platform, kind = _device()
        table = table or DispatchTable.for_device(platform, kind)
        w = np.asarray(w)
        self.dtype = jnp.dtype(dtype or w.dtype)
        bsr = bsr_from_dense(w, block_shape)
        self.block_density = bsr.block_density
        self.path = _check_path(path or choose_path(self.block_density, "linear", platform,
                                                    kind, table))
        if self.path == "mosaic_gpu" and self.dtype not in (jnp.bfloat16, jnp.float16):
            if path is not None:
                raise ValueError(f"the Mosaic GPU kernel takes bfloat16/float16 weights, got "
                                 f"{self.dtype}; pass dtype=jnp.bfloat16 or path='triton'")
            self.path = "triton"  # auto-chosen: Triton runs f32 (TF32) too
        self.in_features, self.out_features = w.shape[1], w.shape[0]
        if block_sizes is None and self.path != "dense" and block_shape[0] == block_shape[1]:
            block_sizes = table.tuned_block_sizes(self.path, "linear", self.dtype, w.shape,
                                                  block_shape[0], self.block_density)
        self.block_sizes, self.interpret = block_sizes, interpret
        self.bias = None if bias is None else SparseWeight(jnp.asarray(bias, jnp.float32))
        if self.path == "dense":
            self.kernel = SparseWeight(jnp.asarray(w.T, self.dtype))  # (d_in, d_out) like Linear
        else:
            self.data = SparseWeight(jnp.asarray(bsr.data, self.dtype))
            self.indices = SparseWeight(jnp.asarray(bsr.indices))
            self.indptr = SparseWeight(jnp.asarray(bsr.indptr))
            self._meta = (bsr.shape, bsr.block_shape, bsr.max_row_blocks)

    @classmethod
    def from_linear(cls, linear: nnx.Linear, block_shape: tuple[int, int] = (64, 64), *,
                    mask: Any = None, **kw) -> SparseLinear:
        """From a pruned ``nnx.Linear`` (kernel (d_in, d_out)), zeros already in the kernel or
        given by ``mask`` (d_in, d_out). ``block_shape`` is (rows of W = outputs, inputs)."""
        w, bias = _dense_weight(linear, mask)
        return cls(w, bias if linear.bias is not None else None, block_shape, **kw)

    def bsr(self) -> BSR:
        """The weight as a BSR pytree (kernel paths only)."""
        shape, block_shape, max_row_blocks = self._meta
        return BSR(data=self.data.value, indices=self.indices.value, indptr=self.indptr.value,
                   shape=shape, block_shape=block_shape, max_row_blocks=max_row_blocks)

    def __call__(self, x: jax.Array) -> jax.Array:
        lead = x.shape[:-1]
        out_dtype = jnp.result_type(x.dtype, self.dtype)
        x2 = x.reshape(-1, x.shape[-1]).astype(self.dtype)
        bias = None if self.bias is None else self.bias.value
        if self.path == "dense":
            y = jnp.dot(x2, self.kernel.value, preferred_element_type=jnp.float32)
            y = y if bias is None else y + bias
        else:
            y = _linear_kernel(self.path)(x2, self.bsr(), bias,
                                          **_kernel_kwargs(self.block_sizes, self.interpret))
        return y.astype(out_dtype).reshape(*lead, self.out_features)


class SparseMLP(nnx.Module):
    """``fc2(gelu(fc1(x)))`` for x (..., D) -> (..., D), both weights block-sparse: a stand-in for
    the models' ``Mlp`` (exact GELU). The kernel path is the fused kernel (hidden never in HBM)."""

    def __init__(self, w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray,
                 block_shape: tuple[int, int], *, dtype: Any = None, path: str | None = None,
                 block_sizes: Any = None, interpret: bool = False,
                 approximate_gelu: bool = False, table: DispatchTable | None = None):
        """w1 (H, D), w2 (D, H) masked dense weights (``y = x @ Wᵀ``), biases (H,), (D,);
        ``block_shape = (b_hidden, b_model)``; ``path``/``table`` as ``SparseLinear``'s."""
        platform, kind = _device()
        table = table or DispatchTable.for_device(platform, kind)
        self.dtype = jnp.dtype(dtype or np.asarray(w1).dtype)
        p = mlp_weights_from_dense(w1, b1, w2, b2, block_shape, dtype=self.dtype)
        D, H = p.dims
        self.block_density = (p.w1.nnz_blocks + p.w2t.nnz_blocks) / (
            2 * p.w1.n_block_rows * p.w1.n_block_cols)
        self.path = _check_path(path or choose_path(self.block_density, "mlp", platform, kind,
                                                    table))
        square = p.w1.block_shape == p.w2t.block_shape == (block_shape[0],) * 2
        if self.path == "mosaic_gpu" and (self.dtype not in (jnp.bfloat16, jnp.float16)
                                          or not square):
            if path is not None:
                raise ValueError(f"the Mosaic GPU MLP takes bfloat16/float16 weights and square "
                                 f"blocks, got {self.dtype} and {block_shape}; use "
                                 f"path='triton'")
            self.path = "triton"  # auto-chosen: Triton runs f32 and rectangular blocks
        self.dim, self.hidden = D, H
        if block_sizes is None and self.path != "dense" and block_shape[0] == block_shape[1]:
            block_sizes = table.tuned_block_sizes(self.path, "mlp", self.dtype, (D, H),
                                                  block_shape[0], self.block_density)
        self.block_sizes, self.interpret = block_sizes, interpret
        self.approximate_gelu = approximate_gelu
        self.b1 = SparseWeight(p.b1)
        self.b2 = SparseWeight(p.b2)
        if self.path == "dense":
            self.w1 = SparseWeight(jnp.asarray(np.asarray(w1).T, self.dtype))  # (D, H)
            self.w2 = SparseWeight(jnp.asarray(np.asarray(w2).T, self.dtype))  # (H, D)
        else:
            self.w1_data, self.w1_indices, self.w1_indptr = (
                SparseWeight(a) for a in (p.w1.data, p.w1.indices, p.w1.indptr))
            self.w2t_data, self.w2t_indices, self.w2t_indptr = (
                SparseWeight(a) for a in (p.w2t.data, p.w2t.indices, p.w2t.indptr))
            self._meta = ((p.w1.shape, p.w1.block_shape, p.w1.max_row_blocks),
                          (p.w2t.shape, p.w2t.block_shape, p.w2t.max_row_blocks))
            if self.path == "mosaic_gpu":  # the kernel's step list, built on the host once
                from .sparse_mlp.kernel_gpu import build_schedule

                sched = build_schedule(p)
                self.schedule = SparseWeight(
                    jnp.stack([sched.kind, sched.xcol, sched.wpos, sched.chunk]))
                self.schedule_ptr = SparseWeight(sched.sptr)

    @classmethod
    def from_mlp(cls, mlp: nnx.Module, block_shape: tuple[int, int] = (64, 64), *,
                 masks: tuple[Any, Any] | None = None, **kw) -> SparseMLP:
        """From a pruned MLP module with ``fc1``/``fc2`` ``nnx.Linear`` children (timm names);
        ``masks`` optionally gives (fc1, fc2) kernel masks."""
        if not (isinstance(getattr(mlp, "fc1", None), nnx.Linear)
                and isinstance(getattr(mlp, "fc2", None), nnx.Linear)):
            raise TypeError(f"expected an MLP with nnx.Linear fc1 and fc2, "
                            f"got {type(mlp).__name__}")
        m1, m2 = masks or (None, None)
        w1, b1 = _dense_weight(mlp.fc1, m1)
        w2, b2 = _dense_weight(mlp.fc2, m2)
        return cls(w1, b1, w2, b2, block_shape, **kw)

    def weights(self) -> SparseMLPWeights:
        """The BSR weights pytree (kernel paths only)."""
        (s1, bs1, k1), (s2, bs2, k2) = self._meta
        return SparseMLPWeights(
            w1=BSR(self.w1_data.value, self.w1_indices.value, self.w1_indptr.value, s1, bs1, k1),
            b1=self.b1.value,
            w2t=BSR(self.w2t_data.value, self.w2t_indices.value, self.w2t_indptr.value, s2,
                    bs2, k2),
            b2=self.b2.value)

    def __call__(self, x: jax.Array) -> jax.Array:
        lead = x.shape[:-1]
        out_dtype = jnp.result_type(x.dtype, self.dtype)
        x2 = x.reshape(-1, self.dim).astype(self.dtype)
        if self.path == "dense":
            h = jnp.dot(x2, self.w1.value, preferred_element_type=jnp.float32) + self.b1.value
            h = jax.nn.gelu(h, approximate=self.approximate_gelu).astype(self.dtype)
            y = jnp.dot(h, self.w2.value, preferred_element_type=jnp.float32) + self.b2.value
        else:
            extra = ()
            if self.path == "mosaic_gpu":
                from .sparse_mlp.kernel_gpu import GpuMLPSchedule

                extra = (GpuMLPSchedule(self.schedule_ptr.value, *self.schedule.value),)
            y = _mlp_kernel(self.path)(x2, self.weights(), *extra,
                                       approximate_gelu=self.approximate_gelu,
                                       **_kernel_kwargs(self.block_sizes, self.interpret))
        return y.astype(out_dtype).reshape(*lead, self.dim)
