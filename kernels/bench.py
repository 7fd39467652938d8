r"""Benchmark of the block-sparse kernels against dense XLA, with roofline ceilings.

Per shape, block size and block sparsity: dense XLA time (the masked dense weight), sparse kernel
time, speedup, the shape's roofline ceiling speedup and the fraction of it reached,
the kernel's effective TFLOP/s on the non-zero work. Times exclude compilation (AOT-compiled
before timing), follow warm-up calls, wait with ``block_until_ready`` and report the median of
``--repeats``. On a GPU the default timer is CUPTI (kernel time on the device, no launch
overhead; ``jax.experimental.mosaic.gpu.profiler``), elsewhere wall-clock over back-to-back
calls.

Roofline (per device kind, peaks in ``PEAKS``): a matmul of T tokens, N outputs, K inputs at
block density d takes at least
  t_sparse = max(d * 2TNK / peak_flops, (bytes(x) + bytes(y) + d * bytes(W)) / hbm_bw)
and dense XLA at least t_dense = the same at d = 1; the ceiling speedup is t_dense / t_sparse.
For the MLP the dense side is XLA's two matmuls with the hidden activation written and read
back (T*H elements, twice), the sparse side the fused kernel (hidden on chip).

Examples:
  python -m taco_jax.kernels.bench --interpret --quick                 # CPU correctness sweep
  python -m taco_jax.kernels.bench --block_sizes=64 --json=out.json    # the issue's H100 table
  python -m taco_jax.kernels.bench --suites=vit --autotune --dispatch_out=dispatch.json
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from .problems import make_linear_problem, make_mlp_problem
from .sparse_mlp.reference import dense_mlp
from .testing import tolerance

FLAGS = flags.FLAGS
flags.DEFINE_string("json", None, "Write every result row (and the device/JAX/peaks header) "
                    "to this JSON file.")
flags.DEFINE_bool("interpret", False, "Run the Pallas kernels in interpret mode (CPU). Timings "
                  "are then meaningless; use with --quick to check correctness end to end.")
flags.DEFINE_bool("quick", False, "Tiny shapes, blocks 16/32, sparsity 0/50/90%: a fast sweep "
                  "for correctness and plumbing (implies --repeats=3 --warmup=1).")
flags.DEFINE_list("suites", ["square", "vit", "resnet"], "Shape groups: 'square' (4096x4096 "
                  "weight, 16384 tokens), 'vit' (ViT-B/16 qkv/proj/fc1/fc2 linears and the "
                  "whole MLP at 197*B tokens), 'resnet' (ResNet-50 1x1 convs as matmuls).")
flags.DEFINE_list("block_sizes", ["16", "32", "64", "128"], "Square weight block sizes to "
                  "sweep; a block that does not divide a shape is skipped.")
flags.DEFINE_list("sparsities", ["0", "50", "75", "90", "95"], "Block sparsities in percent.")
flags.DEFINE_list("kernels", None, "Kernel variants to time: 'triton', 'mosaic_gpu' (GPU), "
                  "'tpu' (TPU). Default: every variant of the current platform; with "
                  "--interpret: tpu and triton (add mosaic_gpu for its CPU interpreter: bf16 "
                  "only, slow).")
flags.DEFINE_list("ops", ["linear", "mlp"], "Which ops: the sparse 'linear' and/or the fused "
                  "'mlp' (the MLP rows come from the 'vit' suite).")
flags.DEFINE_list("vit_batches", ["8", "64"], "ViT batch sizes B (tokens = 197*B).")
flags.DEFINE_integer("resnet_batch", 32, "Batch for the ResNet-50 1x1-conv shapes "
                     "(tokens = batch*H*W of the stage).")
flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "Input dtype (f32 accumulate).")
flags.DEFINE_integer("repeats", 20, "Timed repeats; the median is reported.")
flags.DEFINE_integer("warmup", 3, "Untimed calls after compilation, before timing.")
flags.DEFINE_enum("timer", "auto", ["auto", "cupti", "wall"], "'cupti': GPU kernel time "
                  "through CUPTI; 'wall': wall clock of back-to-back calls + block_until_ready; "
                  "'auto': cupti on GPU when available, else wall.")
flags.DEFINE_integer("wall_inner", 10, "With the wall timer: calls per timed repeat (launches "
                     "queue asynchronously, so launch overhead hides behind kernel time).")
flags.DEFINE_bool("autotune", False, "Time every candidate BlockSizes of a kernel per row and "
                  "keep the best (slower: one compile per candidate).")
flags.DEFINE_string("dispatch_out", None, "Write this device's dispatch measurement (the "
                    "break-even block densities and, with --autotune, the best BlockSizes per "
                    "kernel, op, dtype, shape, block and sparsity) to this JSON file; "
                    "taco_jax.kernels.layers.DispatchTable.from_json reads it.")
flags.DEFINE_bool("check", True, "Compare each kernel's output with the dense result before "
                  "timing (bf16/f32 tolerances as the tests); a mismatch fails the run.")
flags.DEFINE_float("peak_tflops", None, "Override the peak matrix TFLOP/s used for rooflines.")
flags.DEFINE_float("hbm_tbps", None, "Override the HBM bandwidth in TB/s used for rooflines.")
flags.DEFINE_integer("seed", 0, "Seed of the random inputs and block masks.")


# --- device peaks -----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Peak:
    """Dense matrix peaks (TFLOP/s) for bf16 and f32 inputs (f32 = TF32 on NVIDIA tensor
    cores, XLA's default for f32 dots) and HBM bandwidth (TB/s); from vendor datasheets."""

    bf16_tflops: float
    f32_tflops: float
    hbm_tbps: float
    source: str


# First substring of the device kind that matches wins (order: specific before generic).
PEAKS: list[tuple[str, Peak]] = [
    ("H100 PCIe", Peak(756.0, 378.0, 2.0, "NVIDIA H100 PCIe datasheet (dense)")),
    ("H100", Peak(989.0, 494.0, 3.35, "NVIDIA H100 SXM datasheet (dense, no 2:4)")),
    ("H200", Peak(989.0, 494.0, 4.8, "NVIDIA H200 SXM datasheet (dense)")),
    ("A100", Peak(312.0, 156.0, 2.04, "NVIDIA A100 80GB SXM datasheet (dense)")),
    ("L4", Peak(121.0, 60.0, 0.3, "NVIDIA L4 datasheet (dense)")),
    ("TPU v5 lite", Peak(197.0, 98.0, 0.82, "Cloud TPU v5e docs")),
    ("TPU v5e", Peak(197.0, 98.0, 0.82, "Cloud TPU v5e docs")),
    ("TPU v5", Peak(459.0, 229.0, 2.76, "Cloud TPU v5p docs")),
    ("TPU v6", Peak(918.0, 459.0, 1.64, "Cloud TPU v6e docs")),
    ("TPU v4", Peak(275.0, 137.0, 1.2, "Cloud TPU v4 docs")),
    ("cpu", Peak(1.0, 0.5, 0.05, "nominal CPU figures: plumbing only, not a roofline")),
]


def device_peak(device_kind: str) -> Peak:
    """Peaks for a device kind (flags override); an unknown GPU/TPU is an error."""
    peak = next((pk for key, pk in PEAKS if key.lower() in device_kind.lower()), None)
    if peak is None:
        if FLAGS.peak_tflops is None or FLAGS.hbm_tbps is None:
            raise app.UsageError(f"no peak figures for device kind {device_kind!r}; known: "
                                 f"{[k for k, _ in PEAKS]}; pass --peak_tflops and --hbm_tbps")
        peak = Peak(FLAGS.peak_tflops, FLAGS.peak_tflops, FLAGS.hbm_tbps, "flags")
    if FLAGS.peak_tflops is not None or FLAGS.hbm_tbps is not None:
        tf = FLAGS.peak_tflops or peak.bf16_tflops
        peak = Peak(tf, FLAGS.peak_tflops or peak.f32_tflops, FLAGS.hbm_tbps or peak.hbm_tbps,
                    "flags")
    return peak


def roofline_s(flops: float, bytes_: float, peak: Peak, dtype: Any) -> float:
    """Lower bound on time (s) for this much work on the device."""
    tf = peak.bf16_tflops if jnp.dtype(dtype) == jnp.bfloat16 else peak.f32_tflops
    return max(flops / (tf * 1e12), bytes_ / (peak.hbm_tbps * 1e12))


def linear_ceiling(T: int, N: int, K: int, density: float, itemsize: int, peak: Peak,
                   dtype: Any) -> tuple[float, float, float]:
    """(dense floor s, sparse floor s, ceiling speedup) of y (T, N) = x (T, K) @ Wᵀ."""
    io = (T * K + T * N) * itemsize
    dense = roofline_s(2.0 * T * N * K, io + N * K * itemsize, peak, dtype)
    sparse = roofline_s(density * 2.0 * T * N * K, io + density * N * K * itemsize, peak, dtype)
    return dense, sparse, dense / sparse


def mlp_ceiling(T: int, D: int, H: int, density: float, itemsize: int, peak: Peak,
                dtype: Any) -> tuple[float, float, float]:
    """Same for the MLP: dense XLA writes and re-reads the (T, H) hidden activation; the fused
    sparse kernel reads x, writes y and streams the kept weight blocks only."""
    flops = 2.0 * 2 * T * D * H
    w = 2 * D * H * itemsize
    dense = roofline_s(flops, (2 * T * D + 2 * T * H) * itemsize + w, peak, dtype)
    sparse = roofline_s(density * flops, 2 * T * D * itemsize + density * w, peak, dtype)
    return dense, sparse, dense / sparse


# --- kernels ----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class KernelSpec:
    """A kernel variant: module/function per op, its BlockSizes candidates for autotuning."""

    name: str
    platform: str
    module: dict[str, str]  # op -> module path under kernels/
    function: dict[str, str]  # op -> function name
    candidates: dict[str, Callable[[Any], list[Any]]]  # op -> (BlockSizes class) -> list

    def load(self, op: str) -> tuple[Callable, Any]:
        mod = importlib.import_module(f"{__package__}.{self.module[op]}")
        return getattr(mod, self.function[op]), mod.BlockSizes


KERNELS: dict[str, KernelSpec] = {
    "triton": KernelSpec(
        "triton", "gpu",
        {"linear": "sparse_linear.kernel_triton", "mlp": "sparse_mlp.kernel_triton"},
        {"linear": "sparse_linear_triton", "mlp": "sparse_mlp_triton"},
        {"linear": lambda B: [B(bt, w, s) for bt in (64, 128) for w in (4, 8) for s in (3, 4)],
         "mlp": lambda B: [B(bt, w, 2, g) for bt, w, g in (
             (16, 4, 1), (32, 8, 1), (64, 8, 2), (64, 8, 3), (128, 8, 4), (128, 8, 6))]}),
    "mosaic_gpu": KernelSpec(
        "mosaic_gpu", "gpu",
        {"linear": "sparse_linear.kernel_gpu", "mlp": "sparse_mlp.kernel_gpu"},
        {"linear": "sparse_linear_gpu", "mlp": "sparse_mlp_gpu"},
        {"linear": lambda B: [B(bt, s, 4, tis) for bt in (64, 128) for s in (2, 3, 4)
                              for tis in (True, False)],
         "mlp": lambda B: [B(bt, s) for bt in (64, 128) for s in (2, 3)]}),
    "tpu": KernelSpec(
        "tpu", "tpu",
        {"linear": "sparse_linear.kernel_tpu", "mlp": "sparse_mlp.kernel_tpu"},
        {"linear": "sparse_linear_tpu", "mlp": "sparse_mlp_tpu"},
        {"linear": lambda B: [B(bt) for bt in (128, 256, 512)],
         "mlp": lambda B: [B(bt) for bt in (128, 256, 512)]}),
}


def default_kernels(platform: str, interpret: bool) -> list[str]:
    if interpret:
        return ["tpu", "triton"]
    return [k for k, s in KERNELS.items() if s.platform == platform]


# --- shapes -----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Shape:
    """A linear (tokens, d_out, d_in) or an MLP (tokens, D, H)."""

    suite: str
    name: str
    op: str
    tokens: int
    a: int  # linear: d_out; mlp: D
    b: int  # linear: d_in;  mlp: H


def shapes(suites: list[str], vit_batches: list[int], resnet_batch: int, quick: bool
           ) -> list[Shape]:
    if quick:
        return [Shape("quick", "linear", "linear", 48, 128, 64),
                Shape("quick", "linear.odd", "linear", 37, 96, 128),
                Shape("quick", "mlp", "mlp", 24, 64, 128)]
    out: list[Shape] = []
    if "square" in suites:
        out.append(Shape("square", "4096x4096", "linear", 16384, 4096, 4096))
    if "vit" in suites:
        for B in vit_batches:
            T = 197 * B
            for name, n, k in (("qkv", 2304, 768), ("proj", 768, 768), ("fc1", 3072, 768),
                               ("fc2", 768, 3072)):
                out.append(Shape("vit", f"vit_b.{name}.B{B}", "linear", T, n, k))
            out.append(Shape("vit", f"vit_b.mlp.B{B}", "mlp", T, 768, 3072))
    if "resnet" in suites:
        # (stage, spatial side, width): bottleneck 1x1 convs conv1 (4w -> w) and conv3 (w -> 4w).
        for stage, side, w in ((1, 56, 64), (2, 28, 128), (3, 14, 256), (4, 7, 512)):
            T = resnet_batch * side * side
            out.append(Shape("resnet", f"r50.l{stage}.conv1", "linear", T, w, 4 * w))
            out.append(Shape("resnet", f"r50.l{stage}.conv3", "linear", T, 4 * w, w))
    return out


# --- timing -----------------------------------------------------------------------------------

def _cupti_available() -> bool:
    try:
        from jax.experimental.mosaic.gpu import profiler  # noqa: F401
        return jax.devices()[0].platform == "gpu"
    except Exception:
        return False


TIMER_FALLBACKS: list[str] = []  # one entry per measurement where CUPTI gave no timing


def time_compiled(compiled: Callable, args: tuple, timer: str, warmup: int, repeats: int,
                  inner: int) -> float:
    """Median seconds per call of an AOT-compiled function (compilation already done)."""
    for _ in range(warmup):
        jax.block_until_ready(compiled(*args))
    if timer == "cupti":
        try:
            from jax.experimental.mosaic.gpu import profiler
            _, ms = profiler.measure(compiled, iterations=repeats)(*args)
            if ms is not None:
                ms = ms if isinstance(ms, list) else [ms]
                return statistics.median(ms) / 1e3
        except Exception as e:  # no CUPTI in this build: fall back to the wall clock
            logging.log_first_n(logging.WARNING, "CUPTI timing failed (%s); wall clock", 1, e)
        TIMER_FALLBACKS.append(timer)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        outs = [compiled(*args) for _ in range(inner)]
        jax.block_until_ready(outs)
        times.append((time.perf_counter() - t0) / inner)
    return statistics.median(times)


def compile_fn(fn: Callable, args: tuple) -> Callable:
    """jit + AOT compile, so no timed call ever compiles."""
    return jax.jit(fn).lower(*args).compile()


# --- one row ----------------------------------------------------------------------------------

def _problem_and_dense(shape: Shape, block: int, sparsity: float, dtype: Any, seed: int):
    """The pruned problem, the dense XLA function and its args (masked dense weights stored
    (d_in, d_out) like nnx.Linear, so XLA sees the layer as the model runs it)."""
    if shape.op == "linear":
        p = make_linear_problem(shape.tokens, shape.a, shape.b, (block, block), sparsity, dtype,
                                seed=seed)
        kernel = p.w_dense.T

        def dense(x, k, b):
            return (jnp.dot(x, k, preferred_element_type=jnp.float32) + b).astype(x.dtype)

        return p, dense, (p.x, kernel, p.bias)
    p = make_mlp_problem(shape.tokens, shape.a, shape.b, (block, block), sparsity, dtype,
                         seed=seed)

    def dense_m(x, w1, b1, w2, b2):
        return dense_mlp(x, w1, b1, w2, b2)

    return p, dense_m, (p.x, p.w1, p.b1, p.w2, p.b2)


def _kernel_call(shape: Shape, kname: str, fn: Callable, bs: Any, interpret: bool, p) -> tuple:
    """(function, args) timing one kernel; host-side metadata is built here, outside timing."""
    if shape.op == "linear":
        return (lambda x, w, b: fn(x, w, b, block_sizes=bs, interpret=interpret)), (p.x, p.w,
                                                                                     p.bias)
    if kname == "mosaic_gpu":  # its step schedule is built on the host, once per weight
        from .sparse_mlp.kernel_gpu import build_schedule

        return ((lambda x, w, s: fn(x, w, s, block_sizes=bs, interpret=interpret)),
                (p.x, p.weights, build_schedule(p.weights)))
    return (lambda x, w: fn(x, w, block_sizes=bs, interpret=interpret)), (p.x, p.weights)


def bench_row(shape: Shape, block: int, sparsity_pct: float, kernels: list[str], dtype: Any,
              peak: Peak, timer: str, opts: dict) -> list[dict]:
    """Time dense XLA once and every kernel variant on one (shape, block, sparsity)."""
    sparsity = sparsity_pct / 100.0
    p, dense_fn, dense_args = _problem_and_dense(shape, block, sparsity, dtype, opts["seed"])
    dense_c = compile_fn(dense_fn, dense_args)
    want = dense_c(*dense_args)
    dense_s = time_compiled(dense_c, dense_args, timer, opts["warmup"], opts["repeats"],
                            opts["inner"])
    if shape.op == "linear":
        density = p.w.block_density
        nz_flops = 2.0 * shape.tokens * shape.a * shape.b * density
        d_floor, s_floor, ceiling = linear_ceiling(shape.tokens, shape.a, shape.b, density,
                                                   jnp.dtype(dtype).itemsize, peak, dtype)
    else:
        w = p.weights
        density = (w.w1.nnz_blocks + w.w2t.nnz_blocks) / (2 * w.w1.n_block_rows
                                                          * w.w1.n_block_cols)
        nz_flops = 4.0 * shape.tokens * shape.a * shape.b * density
        d_floor, s_floor, ceiling = mlp_ceiling(shape.tokens, shape.a, shape.b, density,
                                                jnp.dtype(dtype).itemsize, peak, dtype)
    rows = []
    for kname in kernels:
        spec = KERNELS[kname]
        base = dict(suite=shape.suite, name=shape.name, op=shape.op, tokens=shape.tokens,
                    dims=[shape.a, shape.b], block=block, sparsity_pct=sparsity_pct,
                    block_density=round(density, 4), dtype=jnp.dtype(dtype).name, kernel=kname,
                    dense_ms=dense_s * 1e3, dense_floor_ms=d_floor * 1e3,
                    sparse_floor_ms=s_floor * 1e3, ceiling_speedup=ceiling,
                    dense_frac_roofline=d_floor / dense_s)
        try:
            fn, B = spec.load(shape.op)
        except ImportError as e:
            rows.append({**base, "error": f"kernel not available: {e}"})
            continue
        if opts["autotune"]:
            cands = spec.candidates[shape.op](B)
        elif opts["interpret"]:  # small tiles; the CPU wgmma interpreter takes no transposes
            cands = [B(16) if kname != "mosaic_gpu" else
                     B(64, 2, 1, False) if shape.op == "linear" else B(64, 2)]
        else:
            cands = [B()]
        best = None
        errors = []
        for bs in cands:
            try:
                call, args = _kernel_call(shape, kname, fn, bs, opts["interpret"], p)
                comp = compile_fn(call, args)
                if opts["check"] and best is None:
                    got = np.asarray(comp(*args), np.float32)
                    ref = np.asarray(want, np.float32)
                    tol = tolerance(dtype, opts["interpret"])
                    err = float(np.abs(got - ref).max()) / max(1.0, float(np.abs(ref).max()))
                    if not err <= 2 * tol:
                        raise AssertionError(f"{kname} {shape.name} block {block} "
                                             f"{sparsity_pct}%: max rel err {err:.3g} > {2*tol}")
                t = time_compiled(comp, args, timer, opts["warmup"], opts["repeats"],
                                  opts["inner"])
            except AssertionError:
                raise
            except Exception as e:  # a candidate that does not compile (smem, tiling) is skipped
                errors.append(f"{bs}: {type(e).__name__}: {str(e)[:200]}")
                continue
            if best is None or t < best[0]:
                best = (t, bs)
        if best is None:
            rows.append({**base, "error": "; ".join(errors)})
            continue
        t, bs = best
        speedup = dense_s / t
        rows.append({**base, "sparse_ms": t * 1e3, "speedup": speedup,
                     "frac_of_ceiling": speedup / ceiling,
                     "sparse_frac_roofline": s_floor / t,
                     "eff_tflops": nz_flops / t / 1e12, "block_sizes": dataclasses.asdict(bs),
                     **({"skipped_candidates": errors} if errors else {})})
    return rows


# --- summaries --------------------------------------------------------------------------------

def format_row(r: dict) -> str:
    head = (f"{r['name']:<20} T={r['tokens']:<6} {r['dims'][0]}x{r['dims'][1]:<5} "
            f"b{r['block']:<3} {r['sparsity_pct']:>3.0f}% {r['kernel']:<10}")
    if "error" in r:
        return head + f" ERROR {r['error'][:120]}"
    return head + (f" dense {r['dense_ms']:8.4f}ms sparse {r['sparse_ms']:8.4f}ms "
                   f"x{r['speedup']:5.2f} ceil x{r['ceiling_speedup']:5.2f} "
                   f"({100 * r['frac_of_ceiling']:5.1f}%) {r['eff_tflops']:7.2f} TFLOP/s")


def break_even(rows: list[dict]) -> dict:
    """Per op: the largest block density below which the best kernel's median speedup (over
    shapes and blocks) stays >= 1 at every measured sparsity; and the best GPU path."""
    out: dict[str, Any] = {}
    ok = [r for r in rows if "speedup" in r]
    for op in ("linear", "mlp"):
        by_kernel: dict[str, dict[float, list[float]]] = {}
        for r in ok:
            if r["op"] == op:
                by_kernel.setdefault(r["kernel"], {}).setdefault(r["sparsity_pct"], []).append(
                    r["speedup"])
        best_density, best_kernel = 0.0, None
        for k, per_s in by_kernel.items():
            levels = sorted(per_s)  # ascending sparsity
            med = {s: statistics.median(v) for s, v in per_s.items()}
            density = 0.0
            for i, s in enumerate(levels):
                if all(med[t] >= 1.0 for t in levels[i:]):
                    density = min(0.99, 1.0 - s / 100.0 + 1e-6)
                    break
            if density > best_density or best_kernel is None:
                best_density, best_kernel = density, k
        out[op] = round(best_density, 3)
        if best_kernel in ("triton", "mosaic_gpu"):
            out.setdefault("gpu_path", best_kernel)
    out.setdefault("gpu_path", "triton")
    return out


def dispatch_measurement(device_kind: str, rows: list[dict], tuned_rows: list[dict], *,
                         command: str, date: str) -> dict:
    """The dispatch file of one device kind (``layers.DispatchTable.from_json`` reads it): the
    break-even densities of ``rows`` and the best tiles of the autotuned ``tuned_rows``."""
    ok = [r for r in rows if "speedup" in r]
    tiles = [dict(device_kind=device_kind, kernel=r["kernel"], op=r["op"], dtype=r["dtype"],
                  tokens=r["tokens"], dims=r["dims"], block=r["block"],
                  sparsity_pct=r["sparsity_pct"], block_sizes=r["block_sizes"],
                  sparse_ms=r["sparse_ms"]) for r in tuned_rows if "block_sizes" in r]
    return {"device_kind": device_kind, "jax": jax.__version__, "date": date,
            "command": command, "break_even": break_even(ok) if ok else None, "tiles": tiles}


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    dev = jax.devices()[0]
    platform, kind = dev.platform, dev.device_kind
    quick = FLAGS.quick
    dtype = jnp.dtype(FLAGS.dtype)
    kernels = FLAGS.kernels or default_kernels(platform, FLAGS.interpret)
    for k in kernels:
        if k not in KERNELS:
            raise app.UsageError(f"--kernels: unknown {k!r}; known: {list(KERNELS)}")
        if not FLAGS.interpret and KERNELS[k].platform != platform:
            raise app.UsageError(f"--kernels={k} needs a {KERNELS[k].platform}, this is "
                                 f"{platform}; add --interpret to run it on CPU")
    if platform == "cpu" and not FLAGS.interpret:
        raise app.UsageError("no GPU/TPU here: add --interpret (with --quick) for a CPU run")
    blocks = [16, 32] if quick else [int(b) for b in FLAGS.block_sizes]
    sparsities = [0.0, 50.0, 90.0] if quick else [float(s) for s in FLAGS.sparsities]
    for s in sparsities:
        if not 0 <= s <= 100:
            raise app.UsageError(f"--sparsities must be percentages in [0, 100], got {s}")
    for b in blocks:
        if b not in (16, 32, 64, 128):
            raise app.UsageError(f"--block_sizes must be in 16/32/64/128, got {b}")
    timer = FLAGS.timer
    if timer == "auto":
        timer = "cupti" if (platform == "gpu" and _cupti_available()) else "wall"
    peak = device_peak(kind if platform != "cpu" else "cpu")
    opts = dict(seed=FLAGS.seed, warmup=1 if quick else FLAGS.warmup,
                repeats=3 if quick else FLAGS.repeats,
                inner=1 if (quick or FLAGS.interpret) else FLAGS.wall_inner,
                autotune=FLAGS.autotune, interpret=FLAGS.interpret, check=FLAGS.check)
    header = dict(device=kind, platform=platform, jax=jax.__version__, dtype=dtype.name,
                  timer=timer, interpret=FLAGS.interpret, peak=dataclasses.asdict(peak),
                  argv=sys.argv, kernels=kernels, repeats=opts["repeats"],
                  warmup=opts["warmup"])
    logging.info("bench: %s", header)
    print(f"# device {kind} ({platform}), jax {jax.__version__}, {dtype.name}, timer {timer}, "
          f"peak {peak.bf16_tflops if dtype == jnp.bfloat16 else peak.f32_tflops} TFLOP/s, "
          f"{peak.hbm_tbps} TB/s ({peak.source})", flush=True)
    rows: list[dict] = []
    t_start = time.time()
    sel = [s for s in shapes(FLAGS.suites, [int(b) for b in FLAGS.vit_batches],
                             FLAGS.resnet_batch, quick) if s.op in FLAGS.ops]
    for shape in sel:
        for block in blocks:
            if shape.a % block or shape.b % block:
                logging.info("skip %s: block %d does not divide %dx%d", shape.name, block,
                             shape.a, shape.b)
                continue
            for s in sparsities:
                for r in bench_row(shape, block, s, kernels, dtype, peak, timer, opts):
                    rows.append(r)
                    print(format_row(r), flush=True)
    print(f"# {len(rows)} rows in {time.time() - t_start:.1f}s", flush=True)
    if TIMER_FALLBACKS:  # say so: those rows were timed by the wall clock
        header["timer"] = f"{timer}, wall clock for {len(TIMER_FALLBACKS)} measurements"
        print(f"# WARNING: {header['timer']}", flush=True)
    if FLAGS.json:
        with open(FLAGS.json, "w") as f:
            json.dump({"header": header, "rows": rows}, f, indent=1)
    if FLAGS.dispatch_out:
        record = dispatch_measurement(kind, rows, rows if FLAGS.autotune else [],
                                      command=" ".join(sys.argv),
                                      date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
        with open(FLAGS.dispatch_out, "w") as f:
            json.dump(record, f, indent=1)
    if any("error" in r for r in rows):
        logging.warning("%d rows had errors", sum("error" in r for r in rows))


def run() -> None:
    app.run(main)


if __name__ == "__main__":
    run()
