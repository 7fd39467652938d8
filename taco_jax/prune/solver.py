"""The layer-wise second-order pruning solver (BUILD_NOTES.md, Design).

``prune_layer(W, H, pattern, sparsity)`` prunes ``W`` (d_out, d_in) against the layer-wise Hessian
``H = 2XXᵀ/n`` (d_in, d_in) and returns ``(W_new, mask, stats)``; ``mask`` is True where a weight is
kept. Methods:

- ``"sparsegpt"`` (default): the blocked OBS solve of SparseGPT (``fasterprune``), lazy batch
  updates, every pattern; structured patterns use the greedy group OBS solve.
- ``"obc"``: exact greedy OBS weight by weight per row (Optimal Brain Compression); the accuracy
  reference for small layers (cost ``d_out · d_in³``). Block tiles: greedy group OBS tile by
  tile in each row block, the tiles pruned chosen across row blocks (``obc_tiles``).
- ``"admm"``: the mask chosen by ADMM on a gradual sparsity ramp (``prune.admm``), every
  pattern but structured (which falls back to group OBS); then re-solved on it (``prune.refit``).
- ``"magnitude"``: smallest |w| under the same pattern, no compensation (the baseline).
- ``"auto"``: ``"obc"`` where it is cheap, else ``"admm"`` for unstructured masks and
  ``"sparsegpt"`` for the others (``choose_method``); structured patterns always use the greedy
  group OBS solve.

The host wrapper validates inputs and turns ``sparsity`` into exact integer prune counts, so the
jitted core does not recompile per sparsity level. With ``axis_name`` set (inside ``shard_map``),
``W`` holds a slice of the rows and the few cross-row quantities are gathered or psum'd.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from taco_jax import distributed
from taco_jax.prune.admm import admm_prune
from taco_jax.prune.patterns import (
    NM,
    Block,
    Pattern,
    Structured,
    Unstructured,
    check_shape,
    check_sparsity,
    parse_pattern,
)

METHODS = ("auto", "sparsegpt", "obc", "admm", "magnitude")

# "auto" solves a layer with exact OBC while its cost stays small (d_out·d_in³ flops per pass,
# d_out·d_in² floats of per-row inverse Hessians; r×c tiles 2·d_out·d_in³/r): every layer of the
# demo's resnet_mini and ResNet-50's first stage; wider layers get, unstructured, ADMM (60
# products of d_out·d_in², then the exact re-solve on its mask: on a 768×768 layer at 90% 0.71x
# the error of SparseGPT + re-solve, for 2x its time, BUILD_NOTES), else SparseGPT + re-solve.
OBC_WORK = 2e10
OBC_ROW_CHUNK = 16  # rows solved together by exact OBC (all at once: 11x slower, 128x512)
OBC_MEMORY = 5e7
OBC_TILE_CHUNK_FLOATS = 2**23  # row blocks solved together by tile OBC, each with its (d, d) H⁻¹


def choose_method(method: str, pattern: Pattern, d_out: int, d_in: int) -> str:
    """The solver ``method`` names for a (d_out, d_in) layer: itself, or for "auto" "obc" where
    it is cheap (``OBC_WORK``; ``OBC_MEMORY`` of per-row inverses, which tile OBC's row-block
    chunks bound themselves), else "admm" for unstructured masks and "sparsegpt" for the others:
    on N:M and tiles SparseGPT's joint OBS choice of each group's or tile's weights, re-solved,
    is level with ADMM (0.9–1.15x its error on correlated layers, BUILD_NOTES)."""
    if method != "auto":
        return method
    if isinstance(pattern, Block):  # two greedy passes, d_in/c steps of a rank-c downdate each
        cheap = 2 * d_out * float(d_in) ** 3 / pattern.r <= OBC_WORK
    else:
        cheap = d_out * float(d_in) ** 3 <= OBC_WORK and d_out * float(d_in) ** 2 <= OBC_MEMORY
    if cheap:
        return "obc"
    return "admm" if isinstance(pattern, Unstructured) else "sparsegpt"


class SolveStats(NamedTuple):
    """Per-layer outcome: zeros fraction, ‖WX−ŴX‖²/‖WX‖², damping λ used and Cholesky tries."""

    sparsity: jax.Array
    rel_error: jax.Array
    damp: jax.Array
    damp_tries: jax.Array


# ----------------------------------------------------------------------------- host-side counts


def _floor(x: float) -> int:
    return math.floor(x + 1e-6)  # 0.29 * 100 must give 29, not 28


def _cumulative_counts(sparsity: float, unit: int, edges: np.ndarray) -> np.ndarray:
    """Prune counts per segment so that the total is exactly floor(sparsity · unit · edges[-1])."""
    cum = np.array([_floor(sparsity * unit * e) for e in edges])
    return np.diff(cum).astype(np.int32)


def prune_counts(pattern: Pattern, sparsity: float, d_out: int, d_in: int,
                 blocksize: int) -> np.ndarray:
    """How many items the solver prunes per column block (or in total for structured)."""
    B = min(blocksize, d_in)
    edges = np.minimum(np.arange(0, -(-d_in // B) * B + 1, B), d_in)
    if isinstance(pattern, Unstructured):
        return _cumulative_counts(sparsity, 1 if pattern.per_row else d_out, edges)
    if isinstance(pattern, Block):
        return _cumulative_counts(sparsity, d_out // pattern.r, edges // pattern.c)
    if isinstance(pattern, Structured):
        return np.array([_floor(sparsity * (d_in // pattern.group_size))], np.int32)
    return np.zeros(len(edges) - 1, np.int32)  # N:M fixes its own count


# ----------------------------------------------------------------------------- small helpers


def _psum(x, axis_name):
    return x if axis_name is None else lax.psum(x, axis_name)


def _all_rows(x, axis_name):
    """The full (rows, ...) array from every device's row slice."""
    return x if axis_name is None else lax.all_gather(x, axis_name, axis=0, tiled=True)


def _my_rows(full, local_rows, axis_name):
    if axis_name is None:
        return full
    start = lax.axis_index(axis_name) * local_rows
    return lax.dynamic_slice_in_dim(full, start, local_rows, axis=0)


def lowest_k(x: jax.Array, k: jax.Array, per_row: bool = False) -> jax.Array:
    """Mask of the ``k`` smallest entries of x >= 0 (+inf allowed), ties to the lower index
    (as a stable sort); over the whole array, or in every row if ``per_row``.

    Bisection on the float bit pattern (monotone for x >= 0) finds the k-th smallest value t in
    32 counting passes; entries equal to t are taken in index order. XLA's CPU sort is slow (two
    argsorts of a 768×128 block cost ~0.1 s), this costs a few ms.
    """
    shape = x.shape
    x = x.reshape(shape[0], -1) if per_row else x.reshape(1, -1)
    bits = lax.bitcast_convert_type(x.astype(jnp.float32), jnp.int32)
    k = jnp.broadcast_to(jnp.asarray(k, jnp.int32), (x.shape[0],))[:, None]

    def bisect(_, c):
        lo, hi = c
        mid = lo + (hi - lo) // 2
        enough = jnp.sum(bits <= mid, axis=1, keepdims=True) >= k
        return jnp.where(enough, lo, mid + 1), jnp.where(enough, mid, hi)

    lo = jnp.zeros_like(k)
    hi = jnp.full_like(k, 0x7F800000)  # +inf
    t, _ = lax.fori_loop(0, 32, bisect, (lo, hi))
    less = bits < t
    eq = bits == t
    take = eq & (jnp.cumsum(eq, axis=1) <= k - jnp.sum(less, axis=1, keepdims=True))
    return (less | take).reshape(shape)


def _rank_in_groups(x: jax.Array) -> jax.Array:
    """Stable rank of each entry within its last axis (small m): m² comparisons, no sort."""
    i = jnp.arange(x.shape[-1])
    a, b = x[..., :, None], x[..., None, :]
    before = (b < a) | ((b == a) & (i[None, :] < i[:, None]))
    return before.sum(-1)


def _nm_lowest(scores: jax.Array, pattern: NM) -> tuple[jax.Array, jax.Array]:
    """(rows, g) scores as (rows, g/M, M) groups, and which entries are among their group's
    M−N lowest (the N:M choice of each group)."""
    rows, g = scores.shape
    groups = scores.reshape(rows, g // pattern.m, pattern.m)
    return groups, _rank_in_groups(groups) < pattern.m - pattern.n


def select_pruned(scores: jax.Array, k: jax.Array, pattern: Pattern, axis_name=None) -> jax.Array:
    """Pruning mask (True = prune) of one column group from its scores (rows, g) and count ``k``.

    Unstructured: the ``k`` lowest of the group across all rows (per_row: ``k`` in every row).
    N:M: the M−N lowest of every M consecutive columns in each row. Block: the ``k`` lowest r×c
    tiles by summed score. Invalid (padding) columns carry score +inf.
    """
    rows, g = scores.shape
    if isinstance(pattern, NM):
        return _nm_lowest(scores, pattern)[1].reshape(rows, g)
    if isinstance(pattern, Unstructured) and pattern.per_row:
        return lowest_k(scores, k, per_row=True)
    full = _all_rows(scores, axis_name)
    if isinstance(pattern, Block):
        R, r, c = full.shape[0], pattern.r, pattern.c
        tiles = full.reshape(R // r, r, g // c, c).sum((1, 3))
        full = jnp.repeat(jnp.repeat(lowest_k(tiles, k), r, 0), c, 1)
        return _my_rows(full, rows, axis_name)
    return _my_rows(lowest_k(full, k), rows, axis_name)


def select_nm_groups(scores: jax.Array, k: jax.Array, pattern: NM, axis_name=None) -> jax.Array:
    """Pruning mask (True = prune) with the ``k`` M-groups whose N:M choice costs least (its
    M−N lowest scores summed) pruned N:M, the other groups whole: the partial N:M masks of
    ADMM's gradual ramp (``prune.admm``); k = every group gives ``select_pruned``'s mask."""
    rows, g = scores.shape
    groups, inner = _nm_lowest(scores, pattern)
    cost = _all_rows(jnp.sum(jnp.where(inner, groups, 0.0), -1), axis_name)
    chosen = _my_rows(lowest_k(cost, k), rows, axis_name)
    return (inner & chosen[..., None]).reshape(rows, g)


SELECTIONS = ("obs", "diagonal")
MAX_NM_SUBSETS = 256  # N:M groups with more candidate prune sets fall back to the diagonal score


def _joint_costs(W: jax.Array, Ug: jax.Array, sets: jax.Array) -> jax.Array:
    """Error of pruning each column set P together in SparseGPT's column sweep, every row:
    ‖w_P U_PP⁻¹‖², U_PP the set's principal block of the upper factor of H⁻¹ (Ug: the
    group's (g, g) block). The sweep prunes P's columns in order, each error w'_j/U_jj with
    w' already updated by the earlier pruned columns of P, so this sum is exact where
    Σ_P w²/U_jj² (the reference's tile and N:M score) ignores those updates; a single weight
    gives w²/U_jj² again. W (rows, g), sets (S, p) column indices → (rows, S)."""
    Upp = Ug[sets[:, :, None], sets[:, None, :]]        # (S, p, p), upper triangular
    eye = jnp.broadcast_to(jnp.eye(Upp.shape[-1], dtype=Upp.dtype), Upp.shape)
    inv = jax.scipy.linalg.solve_triangular(Upp, eye, lower=False)
    z = jnp.einsum("rsp,spq->rsq", W[:, sets], inv)
    return jnp.sum(z**2, axis=-1)


def _nm_subsets(pattern: NM) -> np.ndarray | None:
    """Every choice of the M−N pruned columns of an M group, (C(M, M−N), M−N); None if too many."""
    if math.comb(pattern.m, pattern.m - pattern.n) > MAX_NM_SUBSETS:
        return None
    return np.asarray(list(itertools.combinations(range(pattern.m), pattern.m - pattern.n)))


def obs_select(Wg: jax.Array, Ug: jax.Array, valid: jax.Array, k: jax.Array, pattern: Pattern,
               axis_name=None) -> jax.Array | None:
    """Pruning mask (True = prune) of one selection group by the joint cost of each choice
    (``_joint_costs``), or None where the pattern prunes single weights (whose joint cost is
    the diagonal score). Block: the ``k`` r×c tiles of least cost summed over their rows;
    N:M: in each row, the M−N columns of least joint cost among all choices. Wg (rows, g),
    Ug (g, g) the group's block of SparseGPT's factor, ``valid`` (g,) False on padding columns."""
    rows, g = Wg.shape
    if isinstance(pattern, Block):
        c = pattern.c
        sets = jnp.arange(g).reshape(g // c, c)
        cost = _joint_costs(Wg, Ug, sets)               # (rows, T)
        cost = jnp.where(valid.reshape(g // c, c).all(1)[None], cost, jnp.inf)
        full = _all_rows(cost, axis_name)
        tiles = full.reshape(full.shape[0] // pattern.r, pattern.r, g // c).sum(1)
        mask = jnp.repeat(jnp.repeat(lowest_k(tiles, k), pattern.r, 0), c, 1)
        return _my_rows(mask, rows, axis_name)
    if isinstance(pattern, NM):
        subsets = _nm_subsets(pattern)
        if subsets is None:
            return None
        best = jnp.argmin(_joint_costs(Wg, Ug, jnp.asarray(subsets)), axis=1)   # (rows,)
        chosen = np.zeros((len(subsets), g), bool)
        chosen[np.arange(len(subsets))[:, None], subsets] = True
        return jnp.asarray(chosen)[best]
    return None


# ----------------------------------------------------------------------------- damping


def hinv_upper_with_damping(H: jax.Array, percdamp: float, max_tries: int = 8):
    """Upper Cholesky factor U of (H + λ·mean(diag H)·I)⁻¹ = UᵀU, raising λ ×10 on failure.

    Same result as SparseGPT's cholesky → cholesky_inverse → cholesky(upper), in one Cholesky and
    one triangular solve: with J the order-reversing permutation and J·H·J = L Lᵀ, H = R Rᵀ for
    the upper R = J L J, so H⁻¹ = R⁻ᵀR⁻¹ and U = R⁻¹. Returns (U, λ, tries); tries > 1 means a
    factorization failed and λ was raised.
    """
    d = H.shape[0]
    eye = jnp.eye(d, dtype=H.dtype)
    mean_diag = jnp.mean(jnp.diag(H))

    def attempt(lam):
        L = jnp.linalg.cholesky((H + lam * mean_diag * eye)[::-1, ::-1])   # Cholesky
        R = L[::-1, ::-1]                                                    # H = R Rᵀ, R upper
        U = jax.scipy.linalg.solve_triangular(R, eye, lower=False)          # U = R⁻¹
        return U, jnp.all(jnp.isfinite(U)) & jnp.all(jnp.diag(R) > 0)

    def retry(carry):
        lam, tries, *_ = carry
        lam = jnp.maximum(10.0 * lam, 1e-4)
        return (lam, tries + 1, *attempt(lam))

    lam0 = jnp.asarray(percdamp, H.dtype)
    carry = (lam0, jnp.int32(1), *attempt(lam0))
    lam, tries, U, _ = lax.while_loop(lambda c: (~c[3]) & (c[1] < max_tries), retry, carry)
    return U, lam, tries


# ----------------------------------------------------------------------------- SparseGPT


def fasterprune(W: jax.Array, U: jax.Array, counts: jax.Array, pattern: Pattern,
                blocksize: int = 128, axis_name=None, selection: str = "obs"
                ) -> tuple[jax.Array, jax.Array]:
    """SparseGPT's blocked OBS solve. W (rows, d_in), U upper Cholesky of H⁻¹ (d_in, d_in).

    Walks the columns in blocks of B; at the start of every mask-selection group (the block, or M
    columns for N:M) picks what to prune: single weights by w²/U_jj², block tiles and N:M choices
    by their joint OBS cost (``obs_select``; ``selection="diagonal"``: by summed w²/U_jj² as
    the reference does); then for each column j (OBS, Eq. 3):
    ``err = (w_j − q_j)/U_jj`` and ``W[:, j:] −= err ⊗ U[j, j:]``; after the block the accumulated
    errors update all later columns at once (lazy batch update). Returns (W_new, pruned mask,
    Σ_j err_j² per row), the last being ‖(W − Ŵ)X‖² per row under the damped H, since ΔW = E·U
    and H_damped = U⁻¹U⁻ᵀ.
    """
    d_in = W.shape[1]
    B = min(blocksize, d_in)
    nblocks = -(-d_in // B)
    pad = nblocks * B - d_in
    W = jnp.pad(W, ((0, 0), (0, pad)))
    U = jnp.pad(U, ((0, pad), (0, pad))) + jnp.diag((jnp.arange(nblocks * B) >= d_in) * 1.0)
    valid = jnp.arange(nblocks * B) < d_in
    g = pattern.m if isinstance(pattern, NM) else B  # mask-selection group width

    def block(b, carry):
        W, Mask, sq = carry
        i1 = b * B
        W1 = lax.dynamic_slice_in_dim(W, i1, B, axis=1)
        U1 = lax.dynamic_slice(U, (i1, i1), (B, B))
        d1 = jnp.diag(U1)
        v1 = lax.dynamic_slice_in_dim(valid, i1, B)

        def group(s, carry):
            W1, M1, E1 = carry
            j0 = s * g
            Wg = lax.dynamic_slice_in_dim(W1, j0, g, axis=1)
            dg = lax.dynamic_slice_in_dim(d1, j0, g)
            vg = lax.dynamic_slice_in_dim(v1, j0, g)
            chosen = None if selection == "diagonal" else obs_select(
                Wg, lax.dynamic_slice(U1, (j0, j0), (g, g)), vg, counts[b], pattern, axis_name)
            if chosen is None:
                score = jnp.where(vg, Wg**2 / dg**2, jnp.inf)
                chosen = select_pruned(score, counts[b], pattern, axis_name)
            M1 = lax.dynamic_update_slice_in_dim(M1, chosen, j0, axis=1)

            def column(j, carry):
                W1, E1 = carry
                w = W1[:, j]
                q = jnp.where(M1[:, j], 0.0, w)
                err = (w - q) / U1[j, j]                     # OBS error, scaled by U_jj
                W1 = W1 - jnp.outer(err, U1[j])               # W[:, j:] −= err ⊗ U[j, j:]
                return W1.at[:, j].set(q), E1.at[:, j].set(err)

            W1, E1 = lax.fori_loop(j0, j0 + g, column, (W1, E1))
            return W1, M1, E1

        zeros = jnp.zeros_like(W1)
        W1, M1, E1 = lax.fori_loop(0, B // g, group, (W1, zeros.astype(bool), zeros))
        W = lax.dynamic_update_slice_in_dim(W, W1, i1, axis=1)  # the block itself is final

        def later(c, W):                                      # lazy batch update, block by block
            Uc = lax.dynamic_slice(U, (i1, c * B), (B, B))
            Wc = lax.dynamic_slice_in_dim(W, c * B, B, axis=1)
            return lax.dynamic_update_slice_in_dim(W, Wc - E1 @ Uc, c * B, axis=1)

        W = lax.fori_loop(b + 1, nblocks, later, W)
        sq = sq + jnp.sum(E1**2, axis=1)
        return W, lax.dynamic_update_slice_in_dim(Mask, M1, i1, axis=1), sq

    init = (W, jnp.zeros(W.shape, bool), jnp.zeros(W.shape[0], W.dtype))
    W, Mask, sq = lax.fori_loop(0, nblocks, block, init)
    return W[:, :d_in], Mask[:, :d_in], sq


# ----------------------------------------------------------------------------- structured


def spd_inv(A: jax.Array) -> jax.Array:
    """Inverse of a batch of small SPD matrices (G, g, g). Small g: Gauss-Jordan unrolled over g
    and vectorised over G (XLA's CPU batched LU runs one small matrix at a time, ~40x slower)."""
    g = A.shape[-1]
    if g == 1:
        return 1.0 / A
    if g > 16:
        return jnp.linalg.inv(A)
    M = jnp.concatenate([A, jnp.broadcast_to(jnp.eye(g, dtype=A.dtype), A.shape)], axis=-1)
    for i in range(g):  # SPD: pivots are positive, no pivoting needed
        row = M[:, i] / M[:, i, i, None]
        M = M - M[:, :, i, None] * row[:, None, :]
        M = M.at[:, i].set(row)
    return M[:, :, g:]


def group_costs(W: jax.Array, Hinv: jax.Array, removed: jax.Array, group_size: int
                ) -> tuple[jax.Array, jax.Array]:
    """Each group's removal cost ``tr(W_S (H⁻¹_SS)⁻¹ W_Sᵀ)`` (G,) (rows of W not summed over
    devices) and its (H⁻¹_SS)⁻¹ (G, gs, gs), for W (rows, d), H⁻¹ (d, d) and groups of
    ``group_size`` consecutive inputs; removed groups cost nothing here (mask them)."""
    rows, d = W.shape
    gs, G = group_size, d // group_size
    ar = jnp.arange(G)
    eye = jnp.eye(gs, dtype=W.dtype)
    Hss = Hinv.reshape(G, gs, G, gs)[ar, :, ar, :]                         # (G, gs, gs)
    Hss_inv = spd_inv(jnp.where(removed[:, None, None], eye, Hss))
    Wg = W.reshape(rows, G, gs)
    return jnp.einsum("rgi,gij,rgj->g", Wg, Hss_inv, Wg), Hss_inv


def remove_group(W: jax.Array, Hinv: jax.Array, s: jax.Array, Hss_inv: jax.Array,
                 group_size: int) -> tuple[jax.Array, jax.Array]:
    """Remove group ``s`` with the OBS update ``W −= W_S (H⁻¹_SS)⁻¹ H⁻¹_{S,:}`` (then W_S = 0)
    and the downdate ``H⁻¹ −= H⁻¹_{:,S} (H⁻¹_SS)⁻¹ H⁻¹_{S,:}``; ``Hss_inv`` = (H⁻¹_SS)⁻¹."""
    gs = group_size
    H_S = lax.dynamic_slice_in_dim(Hinv, s * gs, gs, axis=0)              # H⁻¹_{S,:}
    W_S = lax.dynamic_slice_in_dim(W, s * gs, gs, axis=1)
    W = W - W_S @ Hss_inv @ H_S
    Hinv = Hinv - H_S.T @ Hss_inv @ H_S
    return lax.dynamic_update_slice_in_dim(W, jnp.zeros_like(W_S), s * gs, axis=1), Hinv


def _group_obs_step(W, Hinv, removed, group_size: int, axis_name=None):
    """One greedy group OBS step on W (rows, d) with H⁻¹ (d, d): remove the not yet removed
    group S of ``group_size`` consecutive inputs of least ``group_costs`` and update W and H⁻¹
    (``remove_group``). Returns (W, H⁻¹, removed, S, its cost)."""
    cost, Hss_inv = group_costs(W, Hinv, removed, group_size)
    cost = jnp.where(removed, jnp.inf, _psum(cost, axis_name))
    s = jnp.argmin(cost)
    W, Hinv = remove_group(W, Hinv, s, Hss_inv[s], group_size)
    return W, Hinv, removed.at[s].set(True), s, cost[s]


def structured_prune(W: jax.Array, Hinv: jax.Array, n_remove: jax.Array, group_size: int,
                     axis_name=None) -> tuple[jax.Array, jax.Array]:
    """Greedy group OBS: remove ``n_remove`` groups of ``group_size`` consecutive input columns
    from every row, one ``_group_obs_step`` at a time."""
    def step(_, carry):
        return _group_obs_step(*carry, group_size, axis_name)[:3]

    G = W.shape[1] // group_size
    W, _, removed = lax.fori_loop(0, n_remove, step, (W, Hinv, jnp.zeros(G, bool)))
    return W, jnp.broadcast_to(jnp.repeat(removed, group_size)[None], W.shape)


# ----------------------------------------------------------------------------- exact OBC


def _obc_row(w, Hinv, count, allowed_fn):
    """Greedy exact OBS on one row: prune ``count`` weights; returns (w, pruned, step losses)."""
    d = w.shape[0]

    def step(t, carry):
        w, Hinv, pruned, losses = carry
        diag = jnp.where(pruned, 1.0, jnp.diag(Hinv))
        cost = jnp.where(pruned | ~allowed_fn(pruned), jnp.inf, w**2 / diag)
        q = jnp.argmin(cost)
        active = t < count
        dq = diag[q]
        w_new = w - (w[q] / dq) * Hinv[:, q]               # δ = −w_q/[H⁻¹]_qq · H⁻¹_:q
        Hinv_new = Hinv - jnp.outer(Hinv[:, q], Hinv[q]) / dq
        w = jnp.where(active, w_new.at[q].set(0.0), w)
        Hinv = jnp.where(active, Hinv_new, Hinv)
        pruned = jnp.where(active, pruned.at[q].set(True), pruned)
        return w, Hinv, pruned, losses.at[t].set(jnp.where(active, cost[q] / 2, jnp.inf))

    init = (w, Hinv, jnp.zeros(d, bool), jnp.full(d, jnp.inf, w.dtype))
    w, _, pruned, losses = lax.fori_loop(0, d, step, init)
    return w, pruned, losses


def _rows(fn, W, counts, chunk: int):
    """``fn(w, count)`` over the rows of W (with their counts; None: one count for all),
    ``chunk`` rows at a time (0: all at once). Each row carries its own (d, d) H⁻¹: all rows
    together stream rows·d² floats per step through memory, a few rows stay in cache."""
    if counts is None:
        return lax.map(lambda w: fn(w, None), W, batch_size=chunk or None)
    return lax.map(lambda a: fn(*a), (W, counts), batch_size=chunk or None)


def obc_prune(W: jax.Array, Hinv: jax.Array, total: jax.Array, pattern: Pattern):
    """Exact OBC on every row. Unstructured (group mode) first runs every row to the end and
    gives the ``total`` prunes to the smallest step losses across rows (OBC's global mask)."""
    rows, d = W.shape
    if isinstance(pattern, NM):
        m, cap = pattern.m, pattern.m - pattern.n
        allowed = lambda p: jnp.repeat(p.reshape(-1, m).sum(-1) < cap, m)
        counts = jnp.full(rows, d // m * cap)
    else:
        allowed = lambda p: jnp.ones_like(p)
        if pattern.per_row:
            counts = jnp.full(rows, total)
        else:
            _, _, losses = _rows(lambda w, _: _obc_row(w, Hinv, d, allowed), W, None,
                                 OBC_ROW_CHUNK)
            chosen = lowest_k(losses, total)
            counts = chosen.sum(1)
    W, pruned, _ = _rows(lambda w, c: _obc_row(w, Hinv, c, allowed), W, counts, OBC_ROW_CHUNK)
    return W, pruned


def _obc_tile_rows(Wr, Hinv, count, c: int):
    """Greedy exact group OBS on one row block Wr (r, d): remove ``count`` of its d/c column
    groups (r×c tiles). Returns (Wr, removed (d/c,), step losses (d/c,), +inf past count)."""
    G = Wr.shape[1] // c

    def step(t, carry):
        W, Hinv, removed, losses = carry
        W1, Hinv1, removed1, _, cost = _group_obs_step(W, Hinv, removed, c)
        active = t < count
        keep_old = lambda new, old: jnp.where(active, new, old)
        return (keep_old(W1, W), keep_old(Hinv1, Hinv), keep_old(removed1, removed),
                losses.at[t].set(jnp.where(active, cost / 2, jnp.inf)))

    init = (Wr, Hinv, jnp.zeros(G, bool), jnp.full(G, jnp.inf, Wr.dtype))
    W, _, removed, losses = lax.fori_loop(0, G, step, init)
    return W, removed, losses


def _divisor_at_most(n: int, cap: int) -> int:
    return max(k for k in range(1, min(n, cap) + 1) if n % k == 0)


def obc_tiles(W: jax.Array, Hinv: jax.Array, total: jax.Array, pattern: Block):
    """Exact OBC for r×c tiles: every row block's r rows share one mask, so greedy group OBS
    (``_group_obs_step``, the group's joint cost with all in-tile interactions) runs on each
    row block to the end; the ``total`` tiles of least step loss across row blocks are pruned
    (OBC's global mask, as ``obc_prune``), and each row block is solved again to its count.
    The weights left are the exact least-squares fit on the kept tiles (damped H)."""
    rows, d = W.shape
    r, c = pattern.r, pattern.c
    Wb = W.reshape(rows // r, r, d)
    # Whole chunks: one batched small inverse per program (see ``refit._exact`` on why).
    chunk = _divisor_at_most(rows // r, max(1, OBC_TILE_CHUNK_FLOATS // (d * d)))
    G = d // c

    def rows_map(fn, *xs):
        return lax.map(lambda a: jax.vmap(fn)(*a),
                       tuple(x.reshape(-1, chunk, *x.shape[1:]) for x in xs))

    full = jnp.full(rows // r, G, jnp.int32)
    _, _, losses = rows_map(lambda w, k: _obc_tile_rows(w, Hinv, k, c), Wb, full)
    counts = lowest_k(losses.reshape(rows // r, G), total).sum(1)
    Wn, removed, _ = rows_map(lambda w, k: _obc_tile_rows(w, Hinv, k, c), Wb, counts)
    pruned = jnp.repeat(jnp.repeat(removed.reshape(rows // r, G), r, 0), c, 1)
    return Wn.reshape(rows, d), pruned


# ----------------------------------------------------------------------------- magnitude


def magnitude_prune(W: jax.Array, counts: jax.Array, pattern: Pattern, axis_name=None):
    """Smallest |w| under the pattern, no compensation."""
    rows = W.shape[0]
    score = W**2
    total = counts.sum()
    if isinstance(pattern, Structured):
        gs = pattern.group_size
        cost = _psum(score.reshape(rows, -1, gs).sum((0, 2)), axis_name)
        pruned = jnp.repeat(lowest_k(cost, total), gs)[None]
        pruned = jnp.broadcast_to(pruned, W.shape)
    elif isinstance(pattern, Unstructured) and pattern.per_row:
        pruned = lowest_k(score, total, per_row=True)
    else:
        pruned = select_pruned(score, total, pattern, axis_name)
    return jnp.where(pruned, 0.0, W), pruned


# ----------------------------------------------------------------------------- the layer solve


def add_damping(H: jax.Array, percdamp: float) -> jax.Array:
    """H + percdamp · mean(diag H) · I: the solver's damping (``hinv_upper_with_damping`` at
    its first try), which the re-solve and ADMM use as given."""
    return H + percdamp * jnp.mean(jnp.diag(H)) * jnp.eye(H.shape[0], dtype=H.dtype)


def fill_dead_inputs(H: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(H with a 1 on the diagonal of every dead input, the dead mask (k,)) for H (k, k): an
    input that is always zero has a zero row and column; the 1 keeps H invertible (and counts
    in the damping's mean diagonal) without touching any live input."""
    dead = jnp.diag(H) == 0
    return jnp.where(jnp.diag(dead), 1.0, H), dead


@functools.partial(jax.jit, static_argnames=("pattern", "blocksize", "percdamp", "method",
                                             "axis_name", "selection"))
def _prune_core(W, H, counts, *, pattern, blocksize, percdamp, method, axis_name=None,
                selection="obs"):
    W0 = W
    Hd, dead = fill_dead_inputs(H)
    W = jnp.where(dead[None], 0.0, W)
    num = None
    if method == "magnitude":
        W, pruned = magnitude_prune(W, counts, pattern, axis_name)
        lam, tries = jnp.float32(0), jnp.int32(0)
    elif method == "admm" and not isinstance(pattern, Structured):
        lam, tries = jnp.float32(percdamp), jnp.int32(1)  # ρI keeps every step well posed
        damped = add_damping(Hd, lam)
        if isinstance(pattern, NM):  # ramped over the groups pruned N:M
            total = _psum(jnp.int32(W.size // pattern.m), axis_name)
            select = functools.partial(select_nm_groups, pattern=pattern, axis_name=axis_name)
        else:
            total = counts.sum()
            select = functools.partial(select_pruned, pattern=pattern, axis_name=axis_name)
        W, pruned = admm_prune(W, damped, total, select)
    else:
        U, lam, tries = hinv_upper_with_damping(Hd, percdamp)      # damping, Cholesky inverse
        if isinstance(pattern, Structured):
            Hinv = U.T @ U
            W, pruned = structured_prune(W, Hinv, counts[0], pattern.group_size, axis_name)
        elif method == "obc" and isinstance(pattern, Block):
            W, pruned = obc_tiles(W, U.T @ U, counts.sum(), pattern)
        elif method == "obc":
            W, pruned = obc_prune(W, U.T @ U, counts.sum(), pattern)
        else:
            W1 = W
            W, pruned, sq = fasterprune(W, U, counts, pattern, blocksize, axis_name, selection)
            # ‖ΔW X‖² with the undamped H: Σ err² − λ·mean(diag H)·‖ΔW‖² (dead inputs add 0)
            num = jnp.maximum(_psum(jnp.sum(sq) - lam * jnp.mean(jnp.diag(Hd))
                                    * jnp.sum((W1 - W) ** 2), axis_name), 0.0)
    W = jnp.where(pruned, 0.0, W)
    return W, ~pruned, _stats(W0, W, H, lam, tries, num, axis_name)


def _stats(W0, W, H, lam, tries, num=None, axis_name=None) -> SolveStats:
    """The solve's SolveStats for W0 pruned to W under H; ``num``: ‖(W0 − W)X‖² where the
    solve knows it already. With ``axis_name``, W0 and W are this device's rows."""
    if num is None:
        delta = W0 - W
        num = _psum(jnp.einsum("ri,ij,rj->", delta, H, delta), axis_name)
    den = _psum(jnp.einsum("ri,ij,rj->", W0, H, W0), axis_name)
    zeros = _psum(jnp.sum(W == 0), axis_name)
    size = _psum(jnp.int32(W.size), axis_name)
    return SolveStats(sparsity=zeros / size, rel_error=num / jnp.maximum(den, 1e-30),
                      damp=lam, damp_tries=tries)


@functools.partial(jax.jit, static_argnames=("group_size", "percdamp"))
def _structured_levels_core(W, H, counts, *, group_size, percdamp):
    """Greedy group OBS once to the largest of ``counts`` (ascending, (L,)), the weights kept
    at each count: the greedy order does not depend on the target, so level l equals
    ``_prune_core`` at counts[l] (one pass instead of L). Returns stacked (W, keep, stats)."""
    W0 = W
    Hd, dead = fill_dead_inputs(H)
    W = jnp.where(dead[None], 0.0, W)
    U, lam, tries = hinv_upper_with_damping(Hd, percdamp)
    G = W.shape[1] // group_size

    def step(_, carry):
        return _group_obs_step(*carry, group_size)[:3]

    carry, outs, done = (W, U.T @ U, jnp.zeros(G, bool)), [], 0
    for i in range(counts.shape[0]):
        carry = lax.fori_loop(done, counts[i], step, carry)
        done = counts[i]
        pruned = jnp.broadcast_to(jnp.repeat(carry[2], group_size)[None], W.shape)
        Wl = jnp.where(pruned, 0.0, carry[0])
        outs.append((Wl, ~pruned, _stats(W0, Wl, H, lam, tries)))
    return jax.tree.map(lambda *a: jnp.stack(a), *outs)


def check_finite(W: jax.Array, H: jax.Array) -> None:
    """ValueError when W or H (or a stack of them) holds NaN/inf or H is not symmetric (to 1e-4
    of its largest entry): the solve would return garbage silently (an overflowed activation,
    a bad checkpoint)."""
    bad = [name for name, a in (("weights", W), ("Hessian", H)) if not bool(jnp.isfinite(a).all())]
    if bad:
        raise ValueError(f"non-finite values (NaN/inf) in the layer's {' and '.join(bad)}")
    asym = float(jnp.max(jnp.abs(H - jnp.swapaxes(H, -1, -2))))
    scale = float(jnp.max(jnp.abs(H)))
    if asym > 1e-4 * max(scale, 1e-30):
        raise ValueError(f"the layer's Hessian is not symmetric (max |H - Hᵀ| {asym:.3g}, "
                         f"max |H| {scale:.3g})")


def _check_inputs(W, H, pattern: Pattern, blocksize: int, method: str,
                  selection: str = "obs") -> None:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; allowed: {METHODS}")
    if selection not in SELECTIONS:
        raise ValueError(f"unknown selection {selection!r}; allowed: {SELECTIONS}")
    if W.ndim != 2 or H.shape != (W.shape[1], W.shape[1]):
        raise ValueError(f"W must be (d_out, d_in) and H (d_in, d_in), got W {W.shape}, "
                         f"H {H.shape}")
    if blocksize < 1:
        raise ValueError(f"blocksize must be >= 1, got {blocksize}")
    check_shape(pattern, W.shape[0], W.shape[1], min(blocksize, W.shape[1]))


def prune_layer(W: jax.Array, H: jax.Array, pattern: Pattern | str, sparsity: float = 0.0, *,
                blocksize: int = 128, percdamp: float = 0.01, method: str = "sparsegpt",
                mesh: jax.sharding.Mesh | None = None, selection: str = "obs"
                ) -> tuple[jax.Array, jax.Array, SolveStats]:
    """Prune W (d_out, d_in) given H (d_in, d_in); returns (W_new, keep mask, SolveStats).

    ``sparsity`` is the fraction of zeros (ignored for N:M). ``selection``: how SparseGPT picks
    block tiles and N:M choices, by joint OBS cost ("obs") or summed per-weight scores
    ("diagonal", the reference's rule). ``mesh``: shard the rows of W over
    the mesh's first axis (H replicated); equal to the single-device result. A mesh spanning
    several processes (``taco_jax.distributed``) takes the same W, H in every process and
    returns the full result in every process.
    """
    pattern = parse_pattern(pattern)
    sparsity = check_sparsity(sparsity)
    _check_inputs(W, H, pattern, blocksize, method, selection)
    d_out, d_in = W.shape
    method = choose_method(method, pattern, d_out, d_in)
    counts = jnp.asarray(prune_counts(pattern, sparsity, d_out, d_in, blocksize))
    W = jnp.asarray(W, jnp.float32)
    H = jnp.asarray(H, jnp.float32)
    check_finite(W, H)
    kw = dict(pattern=pattern, blocksize=blocksize, percdamp=float(percdamp), method=method,
              selection=selection)
    n_dev = 1 if mesh is None else mesh.devices.size
    if n_dev == 1 or method == "obc" or d_out % n_dev:
        return _prune_core(W, H, counts, **kw)
    # W, H enter replicated over the mesh (global arrays if it spans processes, each process
    # holding the same values); every device solves its rows
    W1, keep, stats = _sharded_core(mesh, **kw)(*distributed.replicated((W, H, counts), mesh))
    if not distributed.spans_processes(mesh):
        return W1, keep, stats
    return (jnp.asarray(distributed.to_host(W1)), jnp.asarray(distributed.to_host(keep)),
            jax.tree.map(lambda a: jnp.asarray(distributed.to_host(a)), stats))


def prune_layer_levels(W: jax.Array, H: jax.Array, pattern: Pattern | str,
                       sparsities: Sequence[float], *, blocksize: int = 128,
                       percdamp: float = 0.01, method: str = "sparsegpt",
                       mesh: jax.sharding.Mesh | None = None, selection: str = "obs"
                       ) -> list[tuple[jax.Array, jax.Array, SolveStats]]:
    """``prune_layer`` at each of ``sparsities`` (the allocation's error curves): the same
    results, for SparseGPT on one device as ``_prune_core`` vmapped over the levels' counts
    (what does not depend on them, the damping and Cholesky factor, is computed once; the
    column sweeps run for every level together); structured from one greedy pass to the
    deepest level (``_structured_levels_core``); otherwise level by level."""
    pattern = parse_pattern(pattern)
    levels = [check_sparsity(s) for s in sparsities]
    one_device = mesh is None or mesh.devices.size == 1
    structured = isinstance(pattern, Structured) and method != "magnitude"  # one greedy pass
    vmapped = method == "sparsegpt" and not isinstance(pattern, Structured)
    if not (structured or vmapped) or not one_device or len(levels) < 2:
        return [prune_layer(W, H, pattern, s, blocksize=blocksize, percdamp=percdamp,
                            method=method, mesh=mesh, selection=selection) for s in levels]
    _check_inputs(W, H, pattern, blocksize, method, selection)
    W = jnp.asarray(W, jnp.float32)
    H = jnp.asarray(H, jnp.float32)
    check_finite(W, H)
    if structured:
        return _structured_levels(W, H, pattern, levels, blocksize, percdamp)
    d_out, d_in = W.shape
    counts = jnp.asarray(np.stack([prune_counts(pattern, s, d_out, d_in, blocksize)
                                   for s in levels]))
    core = functools.partial(_prune_core, pattern=pattern, blocksize=blocksize,
                             percdamp=float(percdamp), method=method, selection=selection)
    Ws, keeps, stats = jax.vmap(core, in_axes=(None, None, 0))(W, H, counts)
    return [(Ws[i], keeps[i], jax.tree.map(lambda a, i=i: a[i], stats))
            for i in range(len(levels))]


def _structured_levels(W, H, pattern: Structured, levels: list[float], blocksize: int,
                       percdamp: float):
    """``prune_layer`` at each level for a structured pattern (W, H checked float32 arrays),
    from one greedy pass."""
    counts = np.array([prune_counts(pattern, s, *W.shape, blocksize)[0] for s in levels])
    order = np.argsort(counts, kind="stable")
    Ws, keeps, stats = _structured_levels_core(W, H, jnp.asarray(counts[order]),
                                               group_size=pattern.group_size,
                                               percdamp=float(percdamp))
    at = np.argsort(order)  # back to the caller's order of levels
    return [(Ws[i], keeps[i], jax.tree.map(lambda a, i=i: a[i], stats)) for i in at]


@functools.lru_cache(maxsize=64)
def _sharded_core(mesh, **kw):
    from jax.sharding import PartitionSpec as P

    axis = mesh.axis_names[0]
    fn = functools.partial(_prune_core, axis_name=axis, **kw)
    stats_spec = SolveStats(P(), P(), P(), P())
    return jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=(P(axis), P(), P()),
                                 out_specs=(P(axis), P(axis), stats_spec), check_vma=False))
