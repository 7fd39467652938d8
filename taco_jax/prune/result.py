"""What pruning a model returns: per-layer keep-masks and statistics (``sequential.prune_model``
builds it, ``prune.checkpoint`` saves and restores it between layer groups)."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class LayerStats:
    name: str
    shape: tuple[int, ...]
    pattern: str
    sparsity: float
    rel_error: float
    seconds: float
    damp: float = 0.0
    damp_tries: int = 1
    hessian_seconds: float = 0.0  # this layer's share of its group's Hessian collection


@dataclasses.dataclass
class PruneResult:
    """Keep-masks in each layer's own kernel layout, per-layer stats (forward order), and for
    structured runs the kept input channels of each consumer (of a residual stream: keyed by
    its first reader, ``shrink.cuts_by_consumer``)."""

    masks: dict[str, np.ndarray]
    stats: list[LayerStats]
    kept: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    sparsities: dict[str, float] = dataclasses.field(default_factory=dict)
