"""Block-sparse row (BSR) format for a pruned weight, built on the host in NumPy.

A weight ``W`` of shape ``(d_out, d_in)`` (PyTorch/``y = x @ Wᵀ`` orientation, i.e. the
transpose of an ``nnx.Linear`` kernel) is cut into ``(r, c)`` blocks. Block-row ``i`` holds the
weights of output features ``[i*r, (i+1)*r)``; only blocks with a non-zero entry are kept:

- ``data``    (nnz_blocks, r, c)   the kept blocks, grouped by block-row, ascending block-column;
- ``indices`` (nnz_blocks,) int32  block-column id of each kept block;
- ``indptr``  (n_block_rows + 1,) int32  block-row ``i`` owns ``data[indptr[i]:indptr[i+1]]``.

Grouping by output block-row is what the kernels need: one output tile reads one contiguous run
of blocks. ``max_row_blocks`` (a static int) is the longest run: the fixed trip count of kernels
that need one. ``PaddedBSR`` stores exactly ``max_row_blocks`` blocks per row (zero blocks at
the end of short rows) for kernels that want a dense ``(rows, k)`` index table.

``BSR``/``PaddedBSR`` are JAX pytrees (arrays are leaves, shapes are static metadata), so they can
be passed through ``jax.jit`` after ``bsr_from_dense`` built them on the host.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np


def _is_concrete(a: Any) -> bool:
    return isinstance(a, np.ndarray) or (
        isinstance(a, jax.Array) and not isinstance(a, jax.core.Tracer))


def _check_block_shape(block_shape: Any) -> tuple[int, int]:
    if (not isinstance(block_shape, tuple | list) or len(block_shape) != 2
            or not all(isinstance(b, int | np.integer) for b in block_shape)):
        raise ValueError(f"block_shape must be a pair of ints (r, c), got {block_shape!r}")
    r, c = (int(b) for b in block_shape)
    if r <= 0 or c <= 0:
        raise ValueError(f"block_shape must be positive, got {(r, c)}")
    return r, c


@dataclasses.dataclass(frozen=True)
class BSR:
    """A (d_out, d_in) weight in block-sparse-row form (see module docstring for the fields)."""

    data: Any  # (nnz, r, c)
    indices: Any  # (nnz,) int32
    indptr: Any  # (n_block_rows + 1,) int32
    shape: tuple[int, int]
    block_shape: tuple[int, int]
    max_row_blocks: int

    @property
    def n_block_rows(self) -> int:
        return self.shape[0] // self.block_shape[0]

    @property
    def n_block_cols(self) -> int:
        return self.shape[1] // self.block_shape[1]

    @property
    def nnz_blocks(self) -> int:
        return int(self.data.shape[0])

    @property
    def block_density(self) -> float:
        """Kept blocks / all blocks, in [0, 1]."""
        return self.nnz_blocks / max(1, self.n_block_rows * self.n_block_cols)

    @property
    def dtype(self):
        return self.data.dtype

    def validate(self) -> BSR:
        """Check every field; raise ValueError naming the bad value and what is expected."""
        validate_bsr(self)
        return self


jax.tree_util.register_dataclass(
    BSR, data_fields=["data", "indices", "indptr"],
    meta_fields=["shape", "block_shape", "max_row_blocks"])


@dataclasses.dataclass(frozen=True)
class PaddedBSR:
    """BSR with exactly ``max_row_blocks`` slots per block-row.

    - ``data``    (n_block_rows, max_row_blocks, r, c), zero blocks in unused slots;
    - ``indices`` (n_block_rows, max_row_blocks) int32; unused slots repeat the row's last valid
      index (0 for an empty row) so a pipelined kernel sees an unchanged block index and skips
      the copy;
    - ``counts``  (n_block_rows,) int32 valid slots per row.
    """

    data: Any
    indices: Any
    counts: Any
    shape: tuple[int, int]
    block_shape: tuple[int, int]

    @property
    def max_row_blocks(self) -> int:
        return int(self.data.shape[1])


jax.tree_util.register_dataclass(
    PaddedBSR, data_fields=["data", "indices", "counts"], meta_fields=["shape", "block_shape"])


def validate_bsr(bsr: BSR) -> None:
    """Raise ValueError if any field of ``bsr`` is inconsistent (static checks always, value
    checks when the index arrays are concrete)."""
    if (not isinstance(bsr.shape, tuple) or len(bsr.shape) != 2
            or not all(isinstance(s, int) and s > 0 for s in bsr.shape)):
        raise ValueError(f"BSR.shape must be a pair of positive ints (d_out, d_in), "
                         f"got {bsr.shape!r}")
    r, c = _check_block_shape(bsr.block_shape)
    d_out, d_in = bsr.shape
    if d_out % r or d_in % c:
        raise ValueError(f"BSR.shape {bsr.shape} must be divisible by block_shape {(r, c)}")
    nbr, nbc = d_out // r, d_in // c
    if getattr(bsr.data, "ndim", None) != 3 or tuple(bsr.data.shape[1:]) != (r, c):
        raise ValueError(f"BSR.data must have shape (nnz_blocks, {r}, {c}), "
                         f"got {getattr(bsr.data, 'shape', None)}")
    nnz = bsr.data.shape[0]
    if tuple(getattr(bsr.indices, "shape", ())) != (nnz,):
        raise ValueError(f"BSR.indices must have shape ({nnz},) (one per block), "
                         f"got {getattr(bsr.indices, 'shape', None)}")
    if tuple(getattr(bsr.indptr, "shape", ())) != (nbr + 1,):
        raise ValueError(f"BSR.indptr must have shape ({nbr + 1},) (n_block_rows + 1), "
                         f"got {getattr(bsr.indptr, 'shape', None)}")
    for name in ("indices", "indptr"):
        dt = np.dtype(getattr(bsr, name).dtype)
        if dt != np.int32:
            raise ValueError(f"BSR.{name} must be int32, got {dt}")
    if not isinstance(bsr.max_row_blocks, int) or not 0 <= bsr.max_row_blocks <= nbc:
        raise ValueError(f"BSR.max_row_blocks must be an int in [0, {nbc}], "
                         f"got {bsr.max_row_blocks!r}")
    if not (_is_concrete(bsr.indices) and _is_concrete(bsr.indptr)):
        return
    indptr = np.asarray(bsr.indptr)
    indices = np.asarray(bsr.indices)
    if indptr[0] != 0 or indptr[-1] != nnz:
        raise ValueError(f"BSR.indptr must start at 0 and end at nnz_blocks={nnz}, "
                         f"got indptr[0]={indptr[0]}, indptr[-1]={indptr[-1]}")
    counts = np.diff(indptr)
    if (counts < 0).any():
        bad = int(np.argmax(counts < 0))
        raise ValueError(f"BSR.indptr must be non-decreasing; indptr[{bad}]={indptr[bad]} > "
                         f"indptr[{bad + 1}]={indptr[bad + 1]}")
    if counts.size and counts.max() != bsr.max_row_blocks:
        raise ValueError(f"BSR.max_row_blocks={bsr.max_row_blocks} but the longest block-row "
                         f"has {counts.max()} blocks")
    if nnz and (indices.min() < 0 or indices.max() >= nbc):
        bad = int(indices[(indices < 0) | (indices >= nbc)][0])
        raise ValueError(f"BSR.indices must lie in [0, {nbc}) (block columns), got {bad}")
    for i in range(nbr):
        row = indices[indptr[i]:indptr[i + 1]]
        if row.size > 1 and (np.diff(row) <= 0).any():
            raise ValueError(f"BSR.indices of block-row {i} must be strictly increasing "
                             f"(sorted, no duplicates), got {row.tolist()}")


def block_mask_from_dense(w: np.ndarray, block_shape: tuple[int, int]) -> np.ndarray:
    """(d_out, d_in) weight -> (d_out/r, d_in/c) bool, True where a block has a non-zero."""
    r, c = _check_block_shape(block_shape)
    d_out, d_in = w.shape
    return (np.asarray(w).reshape(d_out // r, r, d_in // c, c) != 0).any(axis=(1, 3))


def bsr_from_dense(w: Any, block_shape: tuple[int, int],
                   block_mask: np.ndarray | None = None) -> BSR:
    """Build a BSR from a masked dense weight ``w`` (d_out, d_in) on the host.

    Blocks are kept where ``block_mask`` (d_out/r, d_in/c) is True, or, if it is None, where the
    block has any non-zero entry. Keeping a block by mask keeps its zeros too (the round trip is
    exact either way). ``data`` keeps ``w``'s dtype.
    """
    w = np.asarray(w)
    if w.ndim != 2:
        raise ValueError(f"w must be a 2-D (d_out, d_in) weight, got shape {w.shape}")
    r, c = _check_block_shape(block_shape)
    d_out, d_in = w.shape
    if d_out % r or d_in % c:
        raise ValueError(f"weight shape {w.shape} must be divisible by block_shape {(r, c)}; "
                         f"pad the layer or pick a block size dividing both")
    nbr, nbc = d_out // r, d_in // c
    if block_mask is None:
        block_mask = block_mask_from_dense(w, (r, c))
    block_mask = np.asarray(block_mask, dtype=bool)
    if block_mask.shape != (nbr, nbc):
        raise ValueError(f"block_mask must have shape {(nbr, nbc)} (blocks of {(r, c)} in "
                         f"{w.shape}), got {block_mask.shape}")
    blocks = w.reshape(nbr, r, nbc, c).transpose(0, 2, 1, 3)  # (nbr, nbc, r, c)
    if (blocks[~block_mask] != 0).any():
        i, j = np.argwhere(~block_mask & (blocks != 0).any(axis=(2, 3)))[0]
        raise ValueError(f"block_mask drops block ({i}, {j}) which holds non-zero weights; the "
                         f"round trip would not be exact (mask the weight first)")
    rows, cols = np.nonzero(block_mask)  # row-major: grouped by block-row, ascending columns
    counts = block_mask.sum(axis=1)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    bsr = BSR(data=np.ascontiguousarray(blocks[rows, cols]),
              indices=cols.astype(np.int32), indptr=indptr, shape=(d_out, d_in),
              block_shape=(r, c), max_row_blocks=int(counts.max()) if nbr else 0)
    validate_bsr(bsr)
    return bsr


def bsr_to_dense(bsr: BSR) -> np.ndarray:
    """Scatter the blocks back: the exact (d_out, d_in) weight (host NumPy)."""
    validate_bsr(bsr)
    r, c = bsr.block_shape
    nbr, nbc = bsr.n_block_rows, bsr.n_block_cols
    data = np.asarray(bsr.data)
    indptr, indices = np.asarray(bsr.indptr), np.asarray(bsr.indices)
    blocks = np.zeros((nbr, nbc, r, c), dtype=data.dtype)
    rows = np.repeat(np.arange(nbr), np.diff(indptr))
    blocks[rows, indices] = data
    return blocks.transpose(0, 2, 1, 3).reshape(bsr.shape)


def pad_bsr(bsr: BSR, max_row_blocks: int | None = None) -> PaddedBSR:
    """Pad every block-row to ``max_row_blocks`` slots (default: the longest row, at least 1)."""
    validate_bsr(bsr)
    longest = bsr.max_row_blocks
    k = max(1, longest) if max_row_blocks is None else max_row_blocks
    if not isinstance(k, int) or k < max(1, longest):
        raise ValueError(f"max_row_blocks must be an int >= {max(1, longest)} (the longest "
                         f"block-row, at least 1), got {max_row_blocks!r}")
    r, c = bsr.block_shape
    nbr = bsr.n_block_rows
    data = np.asarray(bsr.data)
    indptr, indices = np.asarray(bsr.indptr), np.asarray(bsr.indices)
    pdata = np.zeros((nbr, k, r, c), dtype=data.dtype)
    pidx = np.zeros((nbr, k), dtype=np.int32)
    counts = np.diff(indptr).astype(np.int32)
    for i in range(nbr):
        s, n = indptr[i], counts[i]
        pdata[i, :n] = data[s:s + n]
        pidx[i, :n] = indices[s:s + n]
        pidx[i, n:] = indices[s + n - 1] if n else 0
    return PaddedBSR(data=pdata, indices=pidx, counts=counts, shape=bsr.shape,
                     block_shape=bsr.block_shape)


def padded_to_dense(p: PaddedBSR) -> np.ndarray:
    """Dense (d_out, d_in) weight from a PaddedBSR (only the first ``counts[i]`` slots count)."""
    r, c = p.block_shape
    nbr, nbc = p.shape[0] // r, p.shape[1] // c
    data, idx, counts = np.asarray(p.data), np.asarray(p.indices), np.asarray(p.counts)
    blocks = np.zeros((nbr, nbc, r, c), dtype=data.dtype)
    for i in range(nbr):
        blocks[i, idx[i, :counts[i]]] = data[i, :counts[i]]
    return blocks.transpose(0, 2, 1, 3).reshape(p.shape)


def random_block_mask(shape: tuple[int, int], block_shape: tuple[int, int], sparsity: float,
                      seed: int = 0) -> np.ndarray:
    """A (d_out/r, d_in/c) block mask with ``round((1-sparsity)*n_blocks)`` kept blocks, uniform
    at random (for tests and the benchmark)."""
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    r, c = _check_block_shape(block_shape)
    nbr, nbc = shape[0] // r, shape[1] // c
    n = nbr * nbc
    keep = round((1.0 - sparsity) * n)
    flat = np.zeros(n, dtype=bool)
    flat[np.random.default_rng(seed).permutation(n)[:keep]] = True
    return flat.reshape(nbr, nbc)


def expand_block_mask(block_mask: np.ndarray, block_shape: tuple[int, int]) -> np.ndarray:
    """(nbr, nbc) block mask -> (nbr*r, nbc*c) element mask."""
    r, c = block_shape
    return np.kron(np.asarray(block_mask, dtype=bool), np.ones((r, c), dtype=bool))


def to_device(bsr: BSR, dtype: Any = None) -> BSR:
    """Copy the arrays to the default device (data optionally cast to ``dtype``)."""
    data = jax.numpy.asarray(bsr.data, dtype=dtype)
    return dataclasses.replace(bsr, data=data, indices=jax.numpy.asarray(bsr.indices),
                               indptr=jax.numpy.asarray(bsr.indptr))
