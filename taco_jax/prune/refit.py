"""The exact re-solve of a layer's kept weights on a fixed mask.

SparseGPT picks a mask and updates the weights in one pass over the columns; at the 60–95%
per-layer sparsities an allocation assigns, its weights are far from the best ones for its own
mask (2–6x the least-squares error on the demo's layers, issue "Beyond SparseGPT"). Given the
mask, the best weights are a least-squares problem per output row r with kept inputs K_r:

    min_v ‖(v − w_r) X‖² + λ‖v − w_r‖²  subject to v_j = 0 for j ∉ K_r,

i.e. with the damped Hessian H_λ = H + λ·mean(diag H)·I (H = 2XXᵀ/n; the same damping as the
solver, which keeps a rank-deficient H well posed):  H_λ[K,K] v_K = H_λ[K,:] w_r.

``refit`` solves it for every row at once: exactly (one Cholesky per row of the system with the
pruned coordinates pinned to zero) when the rows × d³ work is small, else by conjugate
gradients with a Jacobi preconditioner, all rows together (one (rows, d) × (d, d) product per
iteration), warm-started from the given weights, which the result never does worse than.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from taco_jax.prune.solver import add_damping, fill_dead_inputs

# Exact per-row Cholesky while rows · d³ stays below this (≈ 1–2 s on 2 CPU cores); above it,
# conjugate gradients: warm-started from SparseGPT's weights they reach the exact error to 3
# digits within 25 iterations (768x768 and 256x2304 at 50% and 90%, correlated inputs).
EXACT_WORK = 2e10
CG_ITERATIONS = 30
# Rows whose (d, d) systems are built and factorised together by the exact solve: 2²³ floats
# (32 MiB) of them at a time: ResNet-50's layer3 conv3 (1024 × 256) needs 64 MiB of
# temporaries, 513 MiB with all rows at once (XLA's memory analysis).
EXACT_CHUNK_FLOATS = 2**23


def _damped(H: jax.Array, percdamp: float) -> jax.Array:
    """H with dead inputs filled (the solver's ``fill_dead_inputs``) and the solver's damping."""
    return add_damping(fill_dead_inputs(H)[0], percdamp)


@jax.jit
def _exact(W0, Hd, keep):
    """Each row's system with pruned coordinates pinned: A = P H P + (I − P), b = P H w0;
    ``EXACT_CHUNK_FLOATS`` worth of rows' systems at a time, one chunk after another.

    The rows are padded to whole chunks (a padded row keeps nothing: A = I, b = 0) so that
    the program holds a single batched Cholesky. ``lax.map(batch_size=...)`` would factorise
    the remainder rows in a second, independent one; XLA CPU runs the two at once, each on a
    thread of its pool, and each waits there for its own batch's tasks: on 2 cores that
    deadlocks (jaxlib 0.10.2's ``ParallelBatchMap``; seen in ``bench.oneshot``)."""
    def row(w0, k):
        kf = k.astype(Hd.dtype)
        A = Hd * kf[:, None] * kf[None, :] + jnp.diag(1.0 - kf)
        b = kf * (Hd @ w0)
        L = jnp.linalg.cholesky(A)
        return jax.scipy.linalg.cho_solve((L, True), b)

    rows, d = W0.shape
    chunk = max(1, min(rows, EXACT_CHUNK_FLOATS // d**2))
    n = -(-rows // chunk)
    pad = ((0, n * chunk - rows), (0, 0))
    W0p = jnp.pad(W0, pad).reshape(n, chunk, d)
    keepp = jnp.pad(keep, pad).reshape(n, chunk, d)
    V = lax.map(lambda a: jax.vmap(row)(*a), (W0p, keepp))
    return V.reshape(n * chunk, d)[:rows]


@functools.partial(jax.jit, static_argnames=("iterations",))
def _cg(W0, Hd, keep, V, iterations):
    """Jacobi-preconditioned CG on every row's masked system, started at V (masked)."""
    kf = keep.astype(Hd.dtype)
    inv_diag = 1.0 / jnp.diag(Hd)
    V = V * kf
    R = ((W0 - V) @ Hd) * kf          # minus half the gradient of the row objectives
    Z = R * inv_diag
    P, rz = Z, jnp.sum(R * Z, axis=1)

    def step(_, carry):
        V, R, P, rz = carry
        AP = (P @ Hd) * kf
        pap = jnp.sum(P * AP, axis=1)
        alpha = jnp.where(pap > 0, rz / jnp.where(pap > 0, pap, 1.0), 0.0)
        V = V + alpha[:, None] * P
        R = R - alpha[:, None] * AP
        Z = R * inv_diag
        rz_new = jnp.sum(R * Z, axis=1)
        beta = jnp.where(rz > 0, rz_new / jnp.where(rz > 0, rz, 1.0), 0.0)
        return V, R, Z + beta[:, None] * P, rz_new

    V, *_ = lax.fori_loop(0, iterations, step, (V, R, P, rz))
    return V


def refit(W0: jax.Array, H: jax.Array, keep: jax.Array, W: jax.Array | None = None, *,
          percdamp: float = 0.01, method: str = "auto",
          iterations: int = CG_ITERATIONS) -> jax.Array:
    """The least-squares weights (d_out, d_in) on the mask ``keep`` (True = kept) for the
    layer's original weights ``W0`` (d_out, d_in) and Hessian ``H`` (d_in, d_in): zero where
    pruned, each row's kept weights reproducing its outputs best (module docstring).

    ``W``: a solver's weights on the same mask (SparseGPT's), the conjugate gradients' start
    and a floor: a row keeps ``W``'s weights wherever the re-solve does not improve on them.
    ``method``: "exact" (per-row Cholesky), "cg", or "auto" (exact while rows·d³ ≤
    ``EXACT_WORK``)."""
    if method not in ("auto", "exact", "cg"):
        raise ValueError(f"refit method must be 'auto', 'exact' or 'cg', got {method!r}")
    if W0.ndim != 2 or H.shape != (W0.shape[1],) * 2 or keep.shape != W0.shape:
        raise ValueError(f"W0 (d_out, d_in), H (d_in, d_in) and keep (d_out, d_in) expected, "
                         f"got {W0.shape}, {H.shape}, {keep.shape}")
    W0 = jnp.asarray(W0, jnp.float32)
    keep = jnp.asarray(keep, bool)
    start = jnp.where(keep, W0, 0.0) if W is None else jnp.asarray(W, jnp.float32) * keep
    return _refit_damped(W0, _damped(jnp.asarray(H, jnp.float32), percdamp), keep, start,
                         method, iterations)


def _refit_damped(W0, Hd, keep, start, method, iterations):
    """``refit`` on the damped Hessian ``Hd``, from ``start`` (masked)."""
    rows, d = W0.shape
    if method == "exact" or (method == "auto" and rows * float(d) ** 3 <= EXACT_WORK):
        V = _exact(W0, Hd, keep)
    else:
        V = _cg(W0, Hd, keep, start, iterations)
    return _no_worse(W0, Hd, keep, V, start)


def refit_groups(W0: jax.Array, H: jax.Array, keep: jax.Array, W: jax.Array, *,
                 percdamp: float = 0.01, method: str = "auto",
                 iterations: int = CG_ITERATIONS) -> jax.Array:
    """``refit`` for a layer's groups at once: W0, keep, W (G, d_out, d_in), H (G, d_in, d_in)
    or (d_in, d_in); one method for all groups (exact while G·rows·d³ ≤ ``EXACT_WORK``)."""
    G, rows, d = W0.shape
    Hg = jnp.broadcast_to(jnp.asarray(H, jnp.float32), (G, d, d))
    if G == 1:
        return refit(W0[0], Hg[0], keep[0], W[0], percdamp=percdamp, method=method,
                     iterations=iterations)[None]
    if method == "auto":
        method = "exact" if G * rows * float(d) ** 3 <= EXACT_WORK else "cg"
    return jax.vmap(lambda w0, h, k, w: refit(w0, h, k, w, percdamp=percdamp, method=method,
                                              iterations=iterations))(
        jnp.asarray(W0, jnp.float32), Hg, jnp.asarray(keep, bool), jnp.asarray(W, jnp.float32))


def _row_errors(M, W0, Hd):
    """Each row's damped error (m − w0)ᵀ H_λ (m − w0), (rows,)."""
    D = M - W0
    return jnp.sum((D @ Hd) * D, axis=1)


@jax.jit
def _no_worse(W0, Hd, keep, V, start):
    """Per row, V where its damped error is not above ``start``'s (and finite), else start."""
    V = jnp.where(keep, V, 0.0)
    e_new, e_old = _row_errors(V, W0, Hd), _row_errors(start, W0, Hd)
    better = jnp.isfinite(e_new) & (e_new <= e_old)
    return jnp.where(better[:, None], V, start)
