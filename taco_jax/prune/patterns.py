"""Sparsity patterns as small immutable types, and ``parse_pattern`` for config strings.

Every pattern is a frozen dataclass (hashable, so it can be a static argument of ``jax.jit``).
The meaning of ``sparsity`` for each pattern, for a weight ``W`` of shape (d_out, d_in):

- ``Unstructured()``: ``floor(sparsity · d_out · d_in)`` weights are zero (``per_row=True``:
  ``floor(sparsity · d_in)`` in every row).
- ``NM(n, m)``: ``n`` non-zeros kept in every ``m`` consecutive inputs of a row (so 2:4 keeps 2 of
  4); the sparsity is ``1 - n/m`` and the ``sparsity`` argument is ignored.
- ``Block(r, c)``: ``floor(sparsity · #tiles)`` whole r×c tiles are zero (for the BSR kernels).
- ``Structured(group_size)``: ``floor(sparsity · d_in / group_size)`` groups of ``group_size``
  consecutive input columns are removed (channels, MLP neurons, attention heads of ``head_dim``).
"""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np

BLOCK_SIZES = (8, 16, 32, 64)


@dataclasses.dataclass(frozen=True)
class Unstructured:
    """Any weight may be pruned; ``per_row`` picks the mask per row instead of per column group."""

    per_row: bool = False

    def __str__(self) -> str:
        return "unstructured" + ("-row" if self.per_row else "")


@dataclasses.dataclass(frozen=True)
class NM:
    """Keep ``n`` non-zeros in every ``m`` consecutive inputs of a row (2:4, 4:8, any n < m)."""

    n: int
    m: int

    def __post_init__(self):
        if not (isinstance(self.n, int) and isinstance(self.m, int)):
            raise TypeError(f"N:M needs integers, got n={self.n!r}, m={self.m!r}")
        if not 0 < self.n < self.m:
            raise ValueError(f"N:M needs 0 < N < M, got N={self.n}, M={self.m} "
                             "(e.g. 2:4 keeps 2 of every 4 weights)")

    @property
    def density(self) -> float:
        return self.n / self.m

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"


@dataclasses.dataclass(frozen=True)
class Block:
    """Whole r×c tiles of ``W`` (d_out, d_in) are zero or kept; r, c in ``BLOCK_SIZES``."""

    r: int
    c: int

    def __post_init__(self):
        for name, v in (("r", self.r), ("c", self.c)):
            if v not in BLOCK_SIZES:
                raise ValueError(f"block {name}={v!r} is not allowed; allowed: {BLOCK_SIZES}")

    def __str__(self) -> str:
        return f"block{self.r}x{self.c}"


@dataclasses.dataclass(frozen=True)
class Structured:
    """Remove whole groups of ``group_size`` consecutive input columns (channels/neurons/heads)."""

    group_size: int = 1

    def __post_init__(self):
        if not (isinstance(self.group_size, int) and self.group_size >= 1):
            raise ValueError(f"structured group_size must be an int >= 1, got {self.group_size!r}")

    def __str__(self) -> str:
        return "structured" + (f"{self.group_size}" if self.group_size != 1 else "")


Pattern = Unstructured | NM | Block | Structured

_ALLOWED = ("unstructured", "unstructured-row", "N:M (e.g. 2:4, 4:8)",
            "blockRxC with R, C in (8, 16, 32, 64) (e.g. block16x16)",
            "structured or structuredG (G = group size, e.g. structured64 for heads of 64)")


def parse_pattern(spec: str | Pattern) -> Pattern:
    """'unstructured', 'unstructured-row', '2:4', 'block16x16', 'structured', 'structured64'."""
    if isinstance(spec, Unstructured | NM | Block | Structured):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"a pattern is a string or a pattern object, got {spec!r}")
    s = spec.strip().lower()
    if s == "unstructured":
        return Unstructured()
    if s in ("unstructured-row", "unstructured_row"):
        return Unstructured(per_row=True)
    if m := re.fullmatch(r"(\d+):(\d+)", s):
        return NM(int(m[1]), int(m[2]))
    if m := re.fullmatch(r"block(\d+)x(\d+)", s):
        return Block(int(m[1]), int(m[2]))
    if m := re.fullmatch(r"structured(\d*)", s):
        return Structured(int(m[1]) if m[1] else 1)
    raise ValueError(f"unknown sparsity pattern {spec!r}; allowed: {'; '.join(_ALLOWED)}")


def check_sparsity(sparsity: float) -> float:
    """A sparsity in [0, 1) (a Python or NumPy number), else a ValueError naming it."""
    if (isinstance(sparsity, bool | np.bool_) or not isinstance(sparsity, int | float | np.number)
            or not 0.0 <= float(sparsity) < 1.0):
        raise ValueError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
    return float(sparsity)


def check_shape(pattern: Pattern, d_out: int, d_in: int, blocksize: int) -> None:
    """Raise a ValueError naming the shape if ``pattern`` cannot tile W (d_out, d_in)."""
    if isinstance(pattern, NM):
        if d_in % pattern.m:
            raise ValueError(f"N:M {pattern} needs d_in divisible by M={pattern.m}, "
                             f"got d_in={d_in}")
        if blocksize % pattern.m:
            raise ValueError(f"blocksize={blocksize} must be a multiple of M={pattern.m}")
    elif isinstance(pattern, Block):
        if d_out % pattern.r or d_in % pattern.c:
            raise ValueError(f"{pattern} tiles need d_out % {pattern.r} == 0 and "
                             f"d_in % {pattern.c} == 0, got W of shape ({d_out}, {d_in})")
        if blocksize % pattern.c:
            raise ValueError(f"blocksize={blocksize} must be a multiple of the tile width "
                             f"c={pattern.c}")
    elif isinstance(pattern, Structured) and d_in % pattern.group_size:
        raise ValueError(f"structured group_size={pattern.group_size} must divide d_in={d_in}")


def tiling_problem(pattern: Pattern, shape: tuple[int, ...], blocksize: int) -> str | None:
    """Why ``pattern`` cannot tile a layer matrix of ``shape`` (G, d_out, d_in) with the solver's
    ``blocksize`` (capped at d_in), or None when it can: such a layer is left dense."""
    try:
        check_shape(pattern, shape[1], shape[2], min(blocksize, shape[2]))
    except ValueError as e:
        return str(e)
    return None


def target_sparsity(pattern: Pattern, sparsity: float) -> float:
    """The fraction of zeros the pattern aims for (N:M fixes its own)."""
    return 1.0 - pattern.density if isinstance(pattern, NM) else sparsity


def aligned_level(sparsity: float, width: int, group_size: int = 1, multiple: int = 1) -> float:
    """The structured level (share of ``width // group_size`` units removed) nearest to
    ``sparsity`` whose kept channels are a multiple of ``multiple`` or all of them: the kept
    units rounded to the nearest of those (a tie keeps more; never below one step). XLA CPU
    runs resnet_mini with halved streams and inner widths 8/16/32 2.2x faster than dense, at
    6/13/19 1.6x, at 4/8/16 1.8x (``bench.widths``, BUILD_NOTES): its convolutions want whole
    vector registers. Widths below one step are left as ``sparsity`` has them."""
    units = width // group_size
    step = multiple // math.gcd(multiple, group_size)
    if step <= 1 or units < step:
        return sparsity
    kept = units - math.floor(sparsity * units + 1e-6)
    choices = [*range(step, units + 1, step), units]  # whole steps, or the full width
    kept = min(choices, key=lambda k: (abs(k - kept), -k))  # a tie keeps more
    return (units - kept) / units
