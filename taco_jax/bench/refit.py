"""Layer error and time of the one-shot solvers on one layer: SparseGPT, SparseGPT's mask with
its kept weights re-solved exactly (``prune.refit``), OBC where it is affordable, magnitude, and
last for tiles and N:M SparseGPT choosing them by summed per-weight scores (before / after the
re-solve), for unstructured masks ADMM's mask re-solved (``method="admm"``, "auto"'s choice):
``python -m taco_jax.bench.refit [--shapes 768x768,256x2304] [--sparsities 0.5,0.75,0.9]``.

Error: ‖(W − Ŵ)X‖² / ‖WX‖² on correlated inputs (AR(1) + shared low-rank factors, per-input
scales; the solver tests' layer). Time: the median of ``--repeats`` warm calls
(``block_until_ready``), compilation excluded.
"""

from __future__ import annotations

import argparse
import functools
import math
import statistics
import time

import jax
import numpy as np

from taco_jax.prune import refit
from taco_jax.prune.solver import OBC_WORK, prune_layer


def correlated_layer(d_out: int, d_in: int, n: int = 4096, seed: int = 0, rho: float = 0.9
                     ) -> tuple[np.ndarray, np.ndarray]:
    """W (d_out, d_in) and H = 2XXᵀ/n for strongly correlated inputs (AR(1) + low rank)."""
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=(n, d_in))
    X = np.empty_like(Z)
    X[:, 0] = Z[:, 0]
    for j in range(1, d_in):
        X[:, j] = rho * X[:, j - 1] + math.sqrt(1 - rho**2) * Z[:, j]
    X += rng.normal(size=(n, 4)) @ rng.normal(size=(4, d_in))  # shared low-rank factors
    X *= rng.uniform(0.2, 2.0, size=d_in)
    W = rng.normal(size=(d_out, d_in))
    return W.astype(np.float32), (2 * X.T @ X / n).astype(np.float32)


def rel_error(W: np.ndarray, W_new: np.ndarray, H: np.ndarray) -> float:
    """‖(W − Ŵ)X‖² / ‖WX‖² in float64 (BLAS products)."""
    D, H = np.float64(W) - np.float64(W_new), np.float64(H)
    return float(np.sum((D @ H) * D) / np.sum((np.float64(W) @ H) * np.float64(W)))


def _timed(fn, repeats: int):
    out = jax.block_until_ready(fn())  # compile
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="768x768,256x2304",
                   help="comma-separated d_outxd_in layer shapes")
    p.add_argument("--sparsities", default="0.5,0.75,0.9")
    p.add_argument("--pattern", default="unstructured", help="unstructured, 2:4, block16x16 ...")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    print(f"{'layer':>10} {'sparsity':>8} | {'sparsegpt':>17} | {'+ refit':>17} | "
          f"{'obc':>17} | {'magnitude':>9} | {'diagonal / admm':>15}")
    for shape in args.shapes.split(","):
        d_out, d_in = (int(v) for v in shape.split("x"))
        W, H = correlated_layer(d_out, d_in)
        for s in (float(v) for v in args.sparsities.split(",")):
            print(_row(shape, W, H, args.pattern, s, args.repeats), flush=True)


def _row(shape: str, W: np.ndarray, H: np.ndarray, pattern: str, s: float, repeats: int) -> str:
    d_out, d_in = W.shape
    solve = functools.partial(prune_layer, W, H, pattern, s)
    (W1, keep, _), t1 = _timed(functools.partial(solve, method="sparsegpt"), repeats)
    V, t2 = _timed(functools.partial(refit.refit, W, H, keep, W1), repeats)
    obc = "—"
    if d_out * d_in**3 <= OBC_WORK and "block" not in pattern:
        (Wo, _, _), t3 = _timed(functools.partial(solve, method="obc"), 1)
        obc = f"{rel_error(W, np.asarray(Wo), H):.4f} {t3:6.2f}s"
    Wm, _, _ = solve(method="magnitude")
    if "block" in pattern or ":" in pattern:  # choices by summed w²/U_jj², the reference's
        Wd, keep_d, _ = solve(method="sparsegpt", selection="diagonal")
        Vd = refit.refit(W, H, keep_d, Wd)
        other = f"{rel_error(W, np.asarray(Wd), H):.4f} {rel_error(W, np.asarray(Vd), H):.4f}"
    else:  # ADMM's mask, re-solved
        Wa, keep_a, _ = solve(method="admm")
        other = f"{rel_error(W, np.asarray(refit.refit(W, H, keep_a, Wa)), H):.4f}"
    return (f"{shape:>10} {s:8.2f} | {rel_error(W, np.asarray(W1), H):.4f} {t1:6.2f}s | "
            f"{rel_error(W, np.asarray(V), H):.4f} {t2:6.2f}s | {obc:>17} | "
            f"{rel_error(W, np.asarray(Wm), H):9.4f} | {other:>15}")

if __name__ == "__main__":
    main()
