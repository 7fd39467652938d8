"""Our solver against the public SparseGPT reference on the same layers:
``python -m taco_jax.bench.reference --reference_dir=PATH`` (a checkout of
github.com/IST-DASLab/sparsegpt; needs torch and transformers, which its module imports).

Each case is one layer W (d_out, d_in) with correlated (optionally heavy-tailed) calibration
inputs X (samples, d_in); the reference's ``SparseGPT`` (``add_batch`` then ``fasterprune``,
on CPU) and ours (``prune_layer`` with SparseGPT alone, picking N:M choices by the reference's
rule; the default: N:M choices by their joint error, then the exact re-solve on the mask,
``prune.refit``; and ADMM's mask, "auto"'s choice for wide unstructured layers, re-solved
the same way, ``method="admm"``) prune the same W on the same X. The error is the relative
output error ‖X(W − Ŵ)ᵀ‖² / ‖XWᵀ‖² in float64, so ours / reference < 1 means ours is better.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import sys
import time
from pathlib import Path

import jax
import numpy as np

from taco_jax.prune.refit import refit
from taco_jax.prune.solver import prune_layer

CASES = ("0.5", "0.75", "0.9", "2:4", "4:8")
_LOADED: list = []  # each checkout loaded under its own module name, never a cached other one


def problem(d_out: int, d_in: int, samples: int, heavy: bool, seed: int = 0):
    """(W, X): Gaussian weights; inputs with correlated columns, Student-t (3) if ``heavy``."""
    rng = np.random.default_rng(seed)
    base = rng.standard_t(3, (samples, d_in)) if heavy else rng.normal(size=(samples, d_in))
    mix = np.eye(d_in) + 0.1 * rng.normal(size=(d_in, d_in))
    return (rng.normal(size=(d_out, d_in)).astype(np.float32),
            (base @ mix).astype(np.float32))


def rel_error(W: np.ndarray, W_new: np.ndarray, X: np.ndarray) -> float:
    """‖X(W − Ŵ)ᵀ‖² / ‖XWᵀ‖² in float64."""
    X, W, W_new = (np.asarray(a, np.float64) for a in (X, W, W_new))
    return float(np.sum((X @ (W - W_new).T) ** 2) / np.sum((X @ W.T) ** 2))


def load_reference(reference_dir: str):
    """The reference's ``sparsegpt`` module from its checkout (its ``quant`` beside it)."""
    path = Path(reference_dir).expanduser()
    if not (path / "sparsegpt.py").is_file():
        raise SystemExit(f"--reference_dir={reference_dir!r} has no sparsegpt.py: pass a "
                         "checkout of github.com/IST-DASLab/sparsegpt")
    spec = importlib.util.spec_from_file_location(f"_reference_sparsegpt_{len(_LOADED)}",
                                                  path / "sparsegpt.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path))  # for its own ``from quant import *``
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path))
    _LOADED.append(module)
    return module


def reference_prune(module, W: np.ndarray, X: np.ndarray, case: str) -> tuple[np.ndarray, float]:
    """(pruned W, seconds) from the reference's ``SparseGPT`` on a bias-free torch Linear."""
    import torch

    layer = torch.nn.Linear(W.shape[1], W.shape[0], bias=False)
    layer.weight.data = torch.from_numpy(W.copy())
    gpt = module.SparseGPT(layer)
    gpt.add_batch(torch.from_numpy(X), None)
    n, m = (int(v) for v in case.split(":")) if ":" in case else (0, 0)
    sparsity = 0.0 if n else float(case)
    t0 = time.perf_counter()
    # The reference synchronises CUDA and prints its own time and error: neither on CPU.
    with contextlib.redirect_stdout(None), _no_cuda_sync(torch):
        gpt.fasterprune(sparsity, prunen=n, prunem=m, blocksize=128, percdamp=0.01)
    return layer.weight.data.numpy().copy(), time.perf_counter() - t0


@contextlib.contextmanager
def _no_cuda_sync(torch):
    real = torch.cuda.synchronize
    torch.cuda.synchronize = lambda *a, **k: None
    try:
        yield
    finally:
        torch.cuda.synchronize = real


def ours(W: np.ndarray, X: np.ndarray, case: str) -> dict[str, tuple[np.ndarray, float]]:
    """name -> (pruned W, seconds of a warm call): SparseGPT alone, with the re-solve, and
    ADMM's mask with the re-solve."""
    H = 2.0 * X.T.astype(np.float64) @ X / len(X)
    pattern, sparsity = (case, 0.0) if ":" in case else ("unstructured", float(case))

    def alone():  # the reference's algorithm, its N:M rule included
        return prune_layer(W, H, pattern, sparsity, method="sparsegpt", selection="diagonal")

    def resolved(method):
        W1, keep, _ = prune_layer(W, H, pattern, sparsity, method=method)
        return refit(W, H, keep, W1), keep

    out = {}
    for name, fn in [("sparsegpt", alone),
                     ("sparsegpt+refit", functools.partial(resolved, "sparsegpt")),
                     ("admm", functools.partial(resolved, "admm"))]:
        jax.block_until_ready(fn())  # compile
        t0 = time.perf_counter()
        W_new = jax.block_until_ready(fn())[0]
        out[name] = (np.asarray(W_new), time.perf_counter() - t0)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference_dir", required=True,
                    help="a checkout of github.com/IST-DASLab/sparsegpt (read, never changed)")
    ap.add_argument("--shape", default="768x768", help="d_out x d_in of the layer")
    ap.add_argument("--samples", type=int, default=4096, help="calibration input rows")
    ap.add_argument("--cases", default=",".join(CASES),
                    help="comma-separated: unstructured sparsities and N:M patterns")
    ap.add_argument("--heavy", action="store_true", help="Student-t inputs (heavy tails)")
    args = ap.parse_args(argv)
    module = load_reference(args.reference_dir)
    d_out, d_in = (int(v) for v in args.shape.lower().split("x"))
    W, X = problem(d_out, d_in, args.samples, args.heavy)
    print(f"layer {d_out}x{d_in}, {args.samples} samples{' (heavy tails)' if args.heavy else ''};"
          f" relative output error, ours / reference; seconds (ours: a warm call)")
    print(f"{'case':6s} {'reference':>10s} {'sparsegpt':>10s} {'ratio':>6s} "
          f"{'+refit':>10s} {'ratio':>6s} {'admm':>10s} {'ratio':>6s} {'ref s':>6s} "
          f"{'ours s':>7s} {'+refit s':>8s} {'admm s':>7s}")
    for case in args.cases.split(","):
        W_ref, t_ref = reference_prune(module, W, X, case)
        mine = ours(W, X, case)
        e_ref = rel_error(W, W_ref, X)
        (w_a, t_a), (w_b, t_b), (w_c, t_c) = (mine[k] for k in ("sparsegpt", "sparsegpt+refit",
                                                                  "admm"))
        e_a, e_b, e_c = (rel_error(W, w, X) for w in (w_a, w_b, w_c))
        print(f"{case:6s} {e_ref:10.4f} {e_a:10.4f} {e_a / e_ref:6.3f} {e_b:10.4f} "
              f"{e_b / e_ref:6.3f} {e_c:10.4f} {e_c / e_ref:6.3f} {t_ref:6.2f} {t_a:7.2f} "
              f"{t_b:8.2f} {t_c:7.2f}", flush=True)


if __name__ == "__main__":
    main()
