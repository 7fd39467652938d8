"""A generic unlabelled image pool drawn from a dataset split: which images are
kept, and what a chosen set of them is made of. The transfer launcher distils on it; TACO's
recovery may distil on it beside the few-shot set."""

from __future__ import annotations

import numpy as np


def pool_subset(pool_labels: np.ndarray, pool_names: list[str], task_names: list[str],
                task_class_fraction: float, seed: int = 0) -> np.ndarray:
    """Ids of the pool images kept: every image of the other classes and a seeded random
    ``task_class_fraction`` (rounded down) of each task class's images. 1 keeps the pool whole;
    a small fraction makes the task's classes rare in it, as in a generic web-scale pool; 0
    drops them (only related images are left to find)."""
    rng = np.random.default_rng(seed)
    task_ids = [pool_names.index(n) for n in task_names if n in pool_names]
    keep = [np.flatnonzero(~np.isin(pool_labels, task_ids))]
    for c in task_ids:
        ids = np.flatnonzero(pool_labels == c)
        keep.append(rng.choice(ids, int(len(ids) * task_class_fraction), replace=False))
    return np.sort(np.concatenate(keep))


def composition(ids: np.ndarray, pool_labels: np.ndarray, pool_names: list[str],
                task_names: list[str]) -> dict:
    """What a set of pool ``ids`` is made of: image count per pool class and the fraction of
    images of the task's classes (a diagnostic of what retrieval found)."""
    names = np.asarray(pool_names)[pool_labels[ids]]
    counts = {str(n): int(c) for n, c in zip(*np.unique(names, return_counts=True), strict=True)}
    return {"images": len(ids), "task_class_fraction": float(np.isin(names, task_names).mean()),
            "per_class": counts}
