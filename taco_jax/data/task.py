"""A task: a dataset, a subset of its classes, and the few-shot sample drawn from it."""

from __future__ import annotations

import dataclasses

import numpy as np

from taco_jax.data import source


@dataclasses.dataclass(frozen=True)
class Task:
    """A class subset of a prepared tfds dataset.

    Attributes:
      dataset: tfds name (``taco_embedded`` for the embedded default).
      classes: class names or ids of the subset, in the order of the task's labels; empty means
        every class of the dataset.
      data_dir: tfds data directory (None: tfds's default).
      train_split / test_split: where few-shot samples and evaluation images come from.
    """

    dataset: str
    classes: tuple[str | int, ...] = ()
    data_dir: str | None = None
    train_split: str = "train"
    test_split: str = "test"

    def source_class_ids(self) -> np.ndarray:
        """(num_task_classes,) the dataset label id (= source classifier row) of each task label."""
        names = source.class_names(self.dataset, self.data_dir)
        if not self.classes:
            return np.arange(len(names))
        ids = []
        for c in self.classes:
            if isinstance(c, str):
                if c not in names:
                    raise ValueError(f"class {c!r} is not in {self.dataset!r}; its classes are "
                                     f"{names}")
                ids.append(names.index(c))
            elif isinstance(c, int | np.integer) and 0 <= c < len(names):
                ids.append(int(c))
            else:
                raise ValueError(f"class id {c!r} is out of range [0, {len(names)}) for "
                                 f"{self.dataset!r}")
        if len(set(ids)) != len(ids):
            raise ValueError(f"task classes {self.classes} name a class twice")
        return np.asarray(ids)

    def class_names(self) -> list[str]:
        names = source.class_names(self.dataset, self.data_dir)
        return [names[i] for i in self.source_class_ids()]

    def load(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """The task's examples of a split: images (N,H,W,C) uint8 and task labels (N,) int32."""
        data = source.read_split(self.dataset, split, self.data_dir)
        ids = self.source_class_ids()
        remap = np.full(data["label"].max() + 1, -1, np.int64)
        remap[ids] = np.arange(len(ids))
        keep = np.isin(data["label"], ids)
        return data["image"][keep], remap[data["label"][keep]].astype(np.int32)


def few_shot_indices(labels: np.ndarray, shots: int, seed: int) -> np.ndarray:
    """``shots`` example indices per class of ``labels`` (N,), seeded, sorted; deterministic."""
    if shots < 1:
        raise ValueError(f"shots must be >= 1, got {shots}")
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if len(members) < shots:
            raise ValueError(f"class {c} has only {len(members)} examples; cannot draw {shots} "
                             "shots")
        chosen.append(rng.choice(members, shots, replace=False))
    return np.sort(np.concatenate(chosen))
