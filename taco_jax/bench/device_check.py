r"""The prepared GPU check: every kernel on real hardware in one deadline-bound command.

On the GPU machine, from the repository root (runs from the tree, nothing to install: jax, flax,
optax, orbax-checkpoint and torch of the machine's own image are enough)::

  bash kernels/device_check.sh                  # writes to $OUT (else ./device_check_out)
  python -m taco_jax.bench.device_check --out=DIR --deadline_s=450 --stages=probe,square

On CPU (the test suite runs this; interpret mode, tiny shapes, ~30 s)::

  python -m taco_jax.bench.device_check --dry_run --out=DIR

Stages run in order of value, each in its own process, so a hang or a Triton / Mosaic crash
loses the item it was running, not the run: the stage is restarted on its remaining items while
its time lasts. A global deadline (``--deadline_s``) bounds the whole command; a stage that no
longer fits is reported as skipped.

  probe          devices, versions, nvidia-smi
  correctness    every kernel variant vs its plain reference at ViT-B shapes, float32 and
                 bfloat16 (Mosaic GPU: bf16, both ``transpose_in_smem`` paths)
  square         sparse linear 4096x4096 @ 16384 tokens, 64x64 blocks, 0/50/75/90% sparsity
  vit_layers     ViT-B/16 qkv/proj/fc1/fc2 at batch 64, 75/90%
  mlp            the fused sparse MLP at ViT-B/16 shapes, 50/75/90%
  end_to_end     ViT-B/16 batch 64, 90% of 64x64 blocks, per GPU path, vs dense XLA (and the
                 structured model of the same weight count)
  torch_anchor   PyTorch's ``bsr_dense_mm`` (Triton) on the same 4096x4096 matrices
  autotune       the ViT-B/16 rows again over each kernel's BlockSizes candidates (best tiles)

Kernel timings reuse ``taco_jax.kernels.bench`` (AOT-compiled, warmed up, ``block_until_ready``,
median of ``--check_repeats`` >= 20, CUPTI kernel time on a GPU). Files written to ``--out`` (4):

  device_check.json   every stage's items and results, with the probe as header
  device_check.log    every stage's own output
  measured.json       break-even block densities and best tiles for this device kind: commit it
                      as ``kernels/measured/<device kind>.json``; ``layers.choose_path`` loads it
  summary.txt         the table printed last, with the issue's targets
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import pathlib
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import Any

from absl import app, flags

# --- sizes ------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Sizes:
    """Shapes and settings of one mode: the GPU check or the CPU dry run."""

    interpret: bool
    block: int
    check_tokens: int  # tokens of the correctness problems (not a tile multiple on purpose)
    linear: tuple[int, int]  # (d_out, d_in) of the correctness linear (ViT-B qkv)
    mlp: tuple[int, int]  # (D, H)
    square: tuple[int, int, int]  # (tokens, d_out, d_in)
    square_sparsities: tuple[int, ...]
    vit_batch: int
    vit_layers: tuple[tuple[str, int, int], ...]  # (name, d_out, d_in)
    vit_sparsities: tuple[int, ...]
    mlp_sparsities: tuple[int, ...]
    e2e_model: str
    e2e_batch: int
    e2e_sparsity: float
    linear_kernels: tuple[str, ...]  # correctness items: "kernel.dtype[.tis|.notis]"
    mlp_kernels: tuple[str, ...]
    timed_kernels: tuple[str, ...]


GPU = Sizes(
    interpret=False, block=64, check_tokens=197 * 8, linear=(2304, 768), mlp=(768, 3072),
    square=(16384, 4096, 4096), square_sparsities=(0, 50, 75, 90), vit_batch=64,
    vit_layers=(("qkv", 2304, 768), ("proj", 768, 768), ("fc1", 3072, 768), ("fc2", 768, 3072)),
    vit_sparsities=(75, 90), mlp_sparsities=(50, 75, 90), e2e_model="vit_base_patch16_224",
    e2e_batch=64, e2e_sparsity=0.9,
    linear_kernels=("triton.float32", "triton.bfloat16", "mosaic_gpu.bfloat16.tis",
                    "mosaic_gpu.bfloat16.notis"),
    mlp_kernels=("triton.float32", "triton.bfloat16", "mosaic_gpu.bfloat16"),
    timed_kernels=("triton", "mosaic_gpu"))

DRY = Sizes(
    interpret=True, block=16, check_tokens=37, linear=(64, 32), mlp=(32, 64),
    square=(32, 64, 64), square_sparsities=(0, 50, 90), vit_batch=1,
    vit_layers=(("qkv", 96, 32),), vit_sparsities=(75,), mlp_sparsities=(75,),
    e2e_model="vit_mini", e2e_batch=2, e2e_sparsity=0.75,
    linear_kernels=("triton.float32", "triton.bfloat16", "mosaic_gpu.bfloat16.notis"),
    mlp_kernels=("triton.float32",), timed_kernels=("triton",))


@dataclasses.dataclass(frozen=True)
class Context:
    """What every stage function is given: the mode's sizes and the timed repeats."""

    sizes: Sizes
    repeats: int

    @property
    def timed_repeats(self) -> int:
        return 3 if self.sizes.interpret else self.repeats

    def flags(self) -> list[str]:
        """The worker command-line flags that rebuild this context."""
        return [f"--check_repeats={self.repeats}"] + (["--dry_run"] if self.sizes.interpret
                                                      else [])


def _dtype(name: str):
    import jax.numpy as jnp

    return jnp.dtype(name)


# --- stage items (each runs inside a worker process) ------------------------------------------

def probe(_: str, ctx: Context) -> dict:
    """Devices, versions and the GPU as nvidia-smi sees it."""
    import jax

    out: dict[str, Any] = {"python": platform.python_version(), "jax": jax.__version__}
    for mod in ("jaxlib", "flax", "optax", "triton", "torch", "numpy"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception as e:  # a missing package is a fact to report, not a failure
            out[mod] = f"unavailable ({type(e).__name__})"
    devs = jax.devices()
    out["platform"] = devs[0].platform
    out["device_kind"] = devs[0].device_kind
    out["devices"] = len(devs)
    out["core_count"] = getattr(devs[0], "core_count", None)
    if shutil.which("nvidia-smi"):
        q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,"
                            "clocks.max.sm,power.limit", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=30)
        out["nvidia_smi"] = q.stdout.strip() or q.stderr.strip()
    return out


def correctness(item: str, ctx: Context) -> dict:
    """One kernel variant vs its plain jnp reference; item 'op.kernel.dtype[.tis|.notis]'."""
    import numpy as np

    from taco_jax.kernels.problems import make_linear_problem, make_mlp_problem
    from taco_jax.kernels.testing import tolerance

    op, kernel, dtype_name, *opt = item.split(".")
    s, dtype = ctx.sizes, _dtype(dtype_name)
    b = s.block
    if op == "linear":
        from taco_jax.kernels.sparse_linear.reference import sparse_linear_reference

        p = make_linear_problem(s.check_tokens, *s.linear, (b, b), 0.75, dtype, seed=1)
        want = sparse_linear_reference(p.x, p.w, p.bias)
        if kernel == "triton":
            from taco_jax.kernels.sparse_linear.kernel_triton import (
                BlockSizes,
                sparse_linear_triton,
            )

            bs = BlockSizes(16) if s.interpret else BlockSizes()
            got = sparse_linear_triton(p.x, p.w, p.bias, block_sizes=bs, interpret=s.interpret)
        else:
            from taco_jax.kernels.sparse_linear.kernel_gpu import BlockSizes, sparse_linear_gpu

            bs = BlockSizes(64, 2, 1, opt == ["tis"]) if s.interpret else \
                BlockSizes(transpose_in_smem=opt == ["tis"])
            got = sparse_linear_gpu(p.x, p.w, p.bias, block_sizes=bs, interpret=s.interpret)
        shape = [s.check_tokens, *s.linear]
    else:
        from taco_jax.kernels.sparse_mlp.reference import sparse_mlp_reference

        p = make_mlp_problem(s.check_tokens, *s.mlp, (b, b), 0.75, dtype, seed=1)
        want = sparse_mlp_reference(p.x, p.weights)
        if kernel == "triton":
            from taco_jax.kernels.sparse_mlp.kernel_triton import BlockSizes, sparse_mlp_triton

            bs = BlockSizes(16) if s.interpret else BlockSizes()
            got = sparse_mlp_triton(p.x, p.weights, block_sizes=bs, interpret=s.interpret)
        else:
            from taco_jax.kernels.sparse_mlp.kernel_gpu import (
                BlockSizes,
                build_schedule,
                sparse_mlp_gpu,
            )

            bs = BlockSizes(64, 2) if s.interpret else BlockSizes()
            got = sparse_mlp_gpu(p.x, p.weights, build_schedule(p.weights), block_sizes=bs,
                                 interpret=s.interpret)
        shape = [s.check_tokens, *s.mlp]
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    scale = max(1.0, float(np.abs(want).max()))
    err = float(np.abs(got - want).max()) / scale
    tol = tolerance(dtype, s.interpret)
    return {"shape": shape, "block": b, "max_rel_err": err, "tolerance": 2 * tol,
            "finite": bool(np.isfinite(got).all()), "ok": bool(np.isfinite(got).all()
                                                                and err <= 2 * tol)}


def _bench_rows(shape, sparsity_pct: float, ctx: Context, autotune: bool = False
                ) -> list[dict]:
    """``bench.bench_row`` for the timed kernels of this mode (bf16, the mode's block)."""
    import jax

    from taco_jax.kernels import bench

    s = ctx.sizes
    dev = jax.devices()[0]
    peak = bench.device_peak("cpu" if dev.platform == "cpu" else dev.device_kind)
    timer = "cupti" if (dev.platform == "gpu" and bench._cupti_available()) else "wall"
    repeats = ctx.timed_repeats
    opts = dict(seed=0, warmup=1 if s.interpret else 3, repeats=repeats,
                inner=1 if s.interpret else 10, autotune=autotune, interpret=s.interpret,
                check=True)
    return bench.bench_row(shape, s.block, float(sparsity_pct), list(s.timed_kernels),
                           _dtype("bfloat16"), peak, timer, opts)


def square(item: str, ctx: Context) -> dict:
    from taco_jax.kernels.bench import Shape

    T, n, k = ctx.sizes.square
    return {"rows": _bench_rows(Shape("square", f"{n}x{k}", "linear", T, n, k), float(item),
                                ctx)}


def _vit_shape(name: str, s: Sizes):
    from taco_jax.kernels.bench import Shape

    T = 197 * s.vit_batch
    if name == "mlp":
        return Shape("vit", f"vit_b.mlp.B{s.vit_batch}", "mlp", T, *s.mlp)
    n, k = next((n, k) for layer, n, k in s.vit_layers if layer == name)
    return Shape("vit", f"vit_b.{name}.B{s.vit_batch}", "linear", T, n, k)


def vit_layers(item: str, ctx: Context) -> dict:
    name, sparsity = item.split("@")
    return {"rows": _bench_rows(_vit_shape(name, ctx.sizes), float(sparsity), ctx)}


def mlp(item: str, ctx: Context) -> dict:
    return {"rows": _bench_rows(_vit_shape("mlp", ctx.sizes), float(item), ctx)}


def autotune(item: str, ctx: Context) -> dict:
    name, sparsity = item.split("@")
    return {"rows": _bench_rows(_vit_shape(name, ctx.sizes), float(sparsity), ctx,
                                autotune=True)}


def end_to_end(item: str, ctx: Context) -> dict:
    """Dense XLA vs the exported block-sparse ViT on one GPU path (and structured, first item)."""
    from taco_jax.bench.latency_variants import build, time_models

    s = ctx.sizes
    models, x, facts = build(s.e2e_model, batch=s.e2e_batch, sparsity=s.e2e_sparsity,
                             block=s.block, dtype=_dtype("bfloat16"), path=item,
                             interpret=s.interpret, structured=item == s.timed_kernels[0])
    results = time_models(models, x, repeats=ctx.timed_repeats, warmup=1 if s.interpret else 3)
    return {"model": s.e2e_model, "batch": s.e2e_batch, "sparsity": s.e2e_sparsity,
            "block": s.block, "path": item, "results": results,
            "logit_rel_error": facts["sparse_logit_rel_error"],
            "block_weights": facts["block_weights"]}


def torch_anchor(item: str, ctx: Context) -> dict:
    """PyTorch's block-sparse matmul on the square stage's matrices (same seed, same masks):
    ``bsr_dense_mm`` (Triton) on a GPU; on CPU (dry run) ``torch.sparse.mm`` for plumbing."""
    import numpy as np
    import torch

    from taco_jax.kernels.problems import linear_problem_arrays

    s = ctx.sizes
    T, n, k = s.square
    x, w, _, _ = linear_problem_arrays(T, n, k, (s.block, s.block), float(item) / 100,
                                       np.float32, seed=0)
    cuda = torch.cuda.is_available()
    dev, dt = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    wt = torch.from_numpy(w).to(dev, dt)
    xt = torch.from_numpy(np.ascontiguousarray(x.T)).to(dev, dt)  # (d_in, T)
    w_bsr = wt.to_sparse_bsr((s.block, s.block))
    if cuda:
        from torch.sparse._triton_ops import bsr_dense_mm

        def sparse():
            return bsr_dense_mm(w_bsr, xt)
    else:
        def sparse():
            return torch.sparse.mm(w_bsr, xt)

    def dense():
        return wt @ xt

    want = dense().float()
    err = float((sparse().float() - want).abs().max() / max(1.0, float(want.abs().max())))

    def median_ms(fn: Callable) -> float:
        repeats = ctx.timed_repeats
        for _ in range(3):
            fn()
        times = []
        for _ in range(repeats):
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(
                    enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times.append(1e3 * (time.perf_counter() - t0))
        return statistics.median(times)

    d_ms, s_ms = median_ms(dense), median_ms(sparse)
    return {"torch": torch.__version__, "device": dev, "dtype": str(dt), "shape": [T, n, k],
            "block": s.block, "sparsity_pct": float(item), "dense_ms": d_ms, "sparse_ms": s_ms,
            "speedup": d_ms / s_ms, "max_rel_err": err, "ok": err <= 2e-2}


@dataclasses.dataclass(frozen=True)
class Stage:
    """A stage: its items for a mode, the function that runs one, its time budget (seconds)."""

    name: str
    items: Callable[[Sizes], list[str]]
    run: Callable[[str, Context], dict]
    timeout_s: float
    env: tuple[tuple[str, str], ...] = ()


STAGES: tuple[Stage, ...] = (
    Stage("probe", lambda s: ["probe"], probe, 60),
    Stage("correctness", lambda s: [f"linear.{k}" for k in s.linear_kernels]
          + [f"mlp.{k}" for k in s.mlp_kernels], correctness, 120),
    Stage("square", lambda s: [str(p) for p in s.square_sparsities], square, 90),
    Stage("vit_layers", lambda s: [f"{n}@{p}" for p in s.vit_sparsities for n, _, _ in
                                   s.vit_layers], vit_layers, 90),
    Stage("mlp", lambda s: [str(p) for p in s.mlp_sparsities], mlp, 60),
    Stage("end_to_end", lambda s: list(s.timed_kernels), end_to_end, 150),
    # Torch allocates on the GPU itself: keep JAX on the CPU in that process.
    Stage("torch_anchor", lambda s: [str(p) for p in s.square_sparsities if p], torch_anchor,
          60, (("JAX_PLATFORMS", "cpu"),)),
    Stage("autotune", lambda s: [f"{n}@{s.vit_sparsities[-1]}" for n, _, _ in s.vit_layers]
          + [f"mlp@{s.mlp_sparsities[-1]}"], autotune, 150),
)
STAGE_BY_NAME = {s.name: s for s in STAGES}


# --- worker -----------------------------------------------------------------------------------

def worker(stage: Stage, items: list[str], results: str, ctx: Context) -> None:
    """Run items in turn; append {"item", "started"} before and the result after each, so the
    parent knows which item a crash or a hang took."""
    for item in items:
        with open(results, "a") as f:
            f.write(json.dumps({"item": item, "started": True}) + "\n")
        t0 = time.perf_counter()
        try:
            rec = {"item": item, "status": "ok", **stage.run(item, ctx)}
            if rec.get("ok") is False or any("error" in r for r in rec.get("rows", ())):
                rec["status"] = "failed"
        except Exception as e:
            rec = {"item": item, "status": "error", "error": f"{type(e).__name__}: {e}"[:2000],
                   "traceback": traceback.format_exc()[-4000:]}
        rec["wall_s"] = round(time.perf_counter() - t0, 2)
        with open(results, "a") as f:
            f.write(json.dumps(rec, default=str) + "\n")
        print(f"[{stage.name}] {item}: {rec['status']} ({rec['wall_s']} s)", flush=True)


# --- orchestrator -----------------------------------------------------------------------------

def _read_results(path: pathlib.Path) -> tuple[list[dict], str | None]:
    """Finished item records, and the item started last if it never finished."""
    done, started = [], None
    if path.exists():
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            if rec.get("started"):
                started = rec["item"]
            else:
                done.append(rec)
                started = None
    return done, started


def run_stage(stage: Stage, items: list[str], worker_flags: list[str], deadline: float, log,
              tmp: pathlib.Path) -> dict:
    """Run a stage's items in worker processes (``worker_flags`` passed on) until done,
    restarting after a crash or hang on the items not yet tried, while the stage's budget and the
    global deadline (``time.monotonic()`` seconds) last."""
    budget_end = min(deadline, time.monotonic() + stage.timeout_s)
    results = tmp / f"{stage.name}.jsonl"
    records: list[dict] = []
    t0 = time.monotonic()
    while items:
        left = budget_end - time.monotonic()
        if left < 5:
            records += [{"item": i, "status": "skipped", "error": "out of time"} for i in items]
            break
        cmd = [sys.executable, "-m", "taco_jax.bench.device_check", f"--worker={stage.name}",
               f"--items={','.join(items)}", f"--results={results}", *worker_flags]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **dict(stage.env)}
        log.write(f"\n===== {stage.name}: {' '.join(cmd[2:])}\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        try:
            proc.wait(timeout=left)
            cause = f"worker exited with {proc.returncode}"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
            cause = f"timed out after {left:.0f} s"
        done, started = _read_results(results)
        results.unlink(missing_ok=True)
        records += done
        finished = {r["item"] for r in done}
        if started is not None:  # the item a crash or a hang took
            records.append({"item": started, "status": "crashed", "error": cause})
            finished.add(started)
        elif proc.returncode not in (0, None) and len(finished) < len(items):
            records.append({"item": items[len(finished)], "status": "crashed", "error": cause})
            finished.add(items[len(finished)])
        items = [i for i in items if i not in finished]
    status = "ok" if records and all(r["status"] == "ok" for r in records) else "incomplete"
    return {"status": status, "wall_s": round(time.monotonic() - t0, 1), "items": records}


def _rows(report: dict, *stages: str) -> list[dict]:
    return [row for st in stages for rec in report["stages"].get(st, {}).get("items", ())
            for row in rec.get("rows", ())]


def measured_table(report: dict) -> dict:
    """What the dispatch loads for this device kind: break-even densities and best tiles."""
    from taco_jax.kernels import bench

    probe_rec = next(iter(report["stages"].get("probe", {}).get("items", [])), {})
    return bench.dispatch_measurement(
        probe_rec.get("device_kind", "unknown"), _rows(report, "square", "vit_layers", "mlp"),
        _rows(report, "autotune"), command=report["command"], date=report["date"])


TARGETS = (  # (label, stage, selector, minimum speedup): the kernels issue's targets
    ("sparse linear 4096², 0%", "square", {"sparsity_pct": 0.0}, 0.95),
    ("sparse linear 4096², 50%", "square", {"sparsity_pct": 50.0}, 1.6),
    ("sparse linear 4096², 75%", "square", {"sparsity_pct": 75.0}, 3.0),
    ("sparse linear 4096², 90%", "square", {"sparsity_pct": 90.0}, 5.0),
    ("fused sparse MLP, 90%", "mlp", {"sparsity_pct": 90.0}, 3.0),
)


def summarize(report: dict) -> str:
    """The table printed last: each stage's items, the best speedups against the targets."""
    lines = [f"# device check {report['date']}: {report['device']}, jax {report['jax']}, "
             f"{report['wall_s']:.0f} s of {report['deadline_s']:.0f} s"
             + (" (DRY RUN: interpret mode on CPU, timings mean nothing)"
                if report["dry_run"] else "")]
    lines.append(f"{'stage':<13}{'item':<34}{'status':<9}result")
    for name, st in report["stages"].items():
        if not st.get("items"):
            lines.append(f"{name:<13}{'-':<34}{st['status']:<9}{st.get('error', '')}")
        for rec in st.get("items", ()):
            lines.append(f"{name:<13}{rec['item']:<34}{rec['status']:<9}{_result(rec)}")
    for label, stage, sel, target in TARGETS:
        rows = [r for r in _rows(report, stage) if "speedup" in r
                and all(r.get(k) == v for k, v in sel.items())]
        if rows:
            best = max(rows, key=lambda r: r["speedup"])
            verdict = "met" if best["speedup"] >= target else "MISSED"
            lines.append(f"target {label}: best x{best['speedup']:.2f} ({best['kernel']}), "
                         f"wanted >= x{target} — {verdict}")
    for rec in report["stages"].get("end_to_end", {}).get("items", ()):
        for model, r in rec.get("results", {}).items():
            if model != "dense":
                lines.append(f"end to end {rec.get('model')} B{rec.get('batch')} {model} "
                             f"({rec['item']}): x{r['speedup']:.2f} vs dense XLA "
                             "(wanted >= x2.5 for sparse)")
    be = report.get("measured", {}).get("break_even")
    if be:
        lines.append(f"measured break-even block density: linear {be['linear']}, "
                     f"mlp {be['mlp']}, gpu path {be['gpu_path']}")
    return "\n".join(lines)


def _result(rec: dict) -> str:
    if rec["status"] in ("error", "crashed", "skipped"):
        return rec.get("error", "")[:150].replace("\n", " ")
    if "max_rel_err" in rec:
        extra = f" {rec['speedup']:.2f}x" if "speedup" in rec else ""
        return f"max rel err {rec['max_rel_err']:.2e} (tol {rec.get('tolerance', 2e-2):.0e}){extra}"
    if "rows" in rec:
        return "; ".join(f"{r['kernel']} " + (f"x{r['speedup']:.2f}" if "speedup" in r
                                               else "ERROR " + r.get("error", "")[:60])
                         for r in rec["rows"])
    if "results" in rec:
        return ", ".join(f"{m} {r['median_ms']:.2f} ms" for m, r in rec["results"].items())
    if "device_kind" in rec:
        return f"{rec['device_kind']} ({rec['platform']}), jax {rec['jax']}"
    return ""


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "unknown"


def orchestrate(out: pathlib.Path, deadline_s: float, stages: list[Stage], ctx: Context
                ) -> dict:
    """Run the stages in order under the global deadline; write the four files; return them."""
    start = time.monotonic()
    deadline = start + deadline_s
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join([os.path.basename(sys.executable), "-m",
                             "taco_jax.bench.device_check", *sys.argv[1:]]),
        "dry_run": ctx.sizes.interpret, "deadline_s": deadline_s, "stages": {}}
    with tempfile.TemporaryDirectory() as tmp, open(out / "device_check.log", "w") as log:
        for stage in stages:
            if deadline - time.monotonic() < 10:
                report["stages"][stage.name] = {"status": "skipped",
                                                "error": "global deadline reached", "items": []}
                continue
            print(f"== {stage.name}", flush=True)
            report["stages"][stage.name] = run_stage(
                stage, stage.items(ctx.sizes), ctx.flags(), deadline, log, pathlib.Path(tmp))
    probe_rec = next(iter(report["stages"].get("probe", {}).get("items", [])), {})
    report["device"] = probe_rec.get("device_kind", "unknown")
    report["jax"] = probe_rec.get("jax", "unknown")
    report["wall_s"] = time.monotonic() - start
    report["measured"] = measured_table(report)
    (out / "device_check.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "measured.json").write_text(json.dumps(report["measured"], indent=1))
    summary = summarize(report)
    (out / "summary.txt").write_text(summary + "\n")
    print(summary, flush=True)
    print(f"# wrote {out}/device_check.json, device_check.log, measured.json, summary.txt; "
          f"commit measured.json as kernels/measured/{_slug(report['device'])}.json", flush=True)
    return report


def define_flags() -> None:
    """The CLI's flags, defined only when run as a program, so that importing this module (the
    tests do) never collides with another CLI's flags in one process."""
    flags.DEFINE_string("out", None, "Output folder (created; its four files are replaced). "
                        "Default: $OUT if set, else ./device_check_out.")
    flags.DEFINE_float("deadline_s", 450.0, "Global deadline for the whole check, in seconds; "
                       "stages that no longer fit are skipped.", lower_bound=10)
    flags.DEFINE_list("stages", None, "Stages to run (default: all, in order of value).")
    flags.DEFINE_bool("dry_run", False, "CPU plumbing check: interpret mode, tiny shapes, few "
                      "repeats (timings then mean nothing); about 30 s.")
    flags.DEFINE_integer("check_repeats", 20, "Timed repeats per measurement (median).",
                         lower_bound=1)
    flags.DEFINE_string("worker", None, "Internal: run this stage's --items in this process, "
                        "appending one JSON line per item to --results.")
    flags.DEFINE_list("items", None, "Internal: the worker's items.")
    flags.DEFINE_string("results", None, "Internal: the worker's JSON-lines file.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    ctx = Context(DRY if f.dry_run else GPU, f.check_repeats)
    if f.worker:
        if f.worker not in STAGE_BY_NAME or not f.items or not f.results:
            raise app.UsageError("--worker needs a known stage, --items and --results")
        worker(STAGE_BY_NAME[f.worker], f.items, f.results, ctx)
        return
    names = f.stages or [s.name for s in STAGES]
    unknown = [n for n in names if n not in STAGE_BY_NAME]
    if unknown:
        raise app.UsageError(f"--stages: unknown {unknown}; known: {list(STAGE_BY_NAME)}")
    out = pathlib.Path(f.out or os.environ.get("OUT") or "device_check_out")
    orchestrate(out, f.deadline_s, [s for s in STAGES if s.name in names], ctx)


if __name__ == "__main__":
    define_flags()
    app.run(main)
