"""Layer-wise second-order pruning (BUILD_NOTES.md): patterns, Hessians, the solver, sequential."""

from taco_jax.models.shrink import ShrinkPair, infer_pairs
from taco_jax.prune.allocate import allocate_sparsity, error_curves
from taco_jax.prune.hessian import HessianState, collect_hessians, collect_paired
from taco_jax.prune.patterns import NM, Block, Structured, Unstructured, parse_pattern
from taco_jax.prune.sequential import (
    LayerStats,
    PruneConfig,
    PruneResult,
    apply_masks,
    prune_model,
)
from taco_jax.prune.solver import SolveStats, prune_layer
from taco_jax.prune.targets import dense_target

__all__ = [
    "NM",
    "Block",
    "HessianState",
    "LayerStats",
    "PruneConfig",
    "PruneResult",
    "ShrinkPair",
    "SolveStats",
    "Structured",
    "Unstructured",
    "allocate_sparsity",
    "apply_masks",
    "collect_hessians",
    "collect_paired",
    "dense_target",
    "error_curves",
    "infer_pairs",
    "parse_pattern",
    "prune_layer",
    "prune_model",
]
