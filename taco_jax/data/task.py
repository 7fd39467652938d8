"""A task: a dataset, a subset of its classes, and the few-shot sample drawn from it."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx
from tqdm.auto import tqdm

from taco_jax import distributed, files
from taco_jax.data import preprocess as preprocess_lib
from taco_jax.data import source
from taco_jax.models.preprocess import Preprocess
from taco_jax.train import augment as augment_lib
from taco_jax.train import fit


@dataclasses.dataclass(frozen=True)
class Task:
    """A class subset of a dataset.

    Attributes:
      dataset: tfds name of a prepared dataset (``taco_embedded`` for the embedded default,
        ``image_folder`` for a local image folder: ``<data_dir>/<class>/<image>`` or
        ``<data_dir>/<split>/<class>/<image>``, read with Pillow; see ``data.folder``).
      classes: class names or ids of the subset, in the order of the task's labels; empty means
        every class of the dataset. Task label ``i`` is source class (= classifier row)
        ``source_class_ids()[i]``.
      data_dir: tfds data directory (None: tfds's default), or the image folder's root.
      train_split / test_split: where few-shot samples and evaluation images come from.
      skip_bad_files: an image folder's empty and unreadable files are left out and listed
        (``data.folder.scan``), instead of being an error.
    """

    dataset: str
    classes: tuple[str | int, ...] = ()
    data_dir: str | None = None
    train_split: str = "train"
    test_split: str = "test"
    skip_bad_files: bool = False

    def source_class_ids(self) -> np.ndarray:
        """(num_task_classes,) the dataset label id (= source classifier row) of each task label."""
        names = source.class_names(self.dataset, self.data_dir,
                                   skip_bad_files=self.skip_bad_files)
        if not self.classes:
            return np.arange(len(names))
        ids = []
        for c in self.classes:
            if isinstance(c, str):
                if c not in names:
                    shown = names if len(names) <= 50 else [*names[:50], "..."]
                    raise ValueError(f"class {c!r} is not in {self.dataset!r}; its classes are "
                                     f"{shown}")
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
        names = source.class_names(self.dataset, self.data_dir,
                                   skip_bad_files=self.skip_bad_files)
        return [names[i] for i in self.source_class_ids()]

    def split(self, split: str) -> source.Split | source.FolderSplit:
        return source.open_split(self.dataset, split, self.data_dir, self.skip_bad_files)

    def examples(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """The task's examples of a split: their indices in the split (M,) and task labels (M,)
        int32 (source labels remapped to 0..num_task_classes-1)."""
        labels = self.split(split).labels()
        ids = self.source_class_ids()
        remap = np.full(max(labels.max(initial=0), ids.max()) + 1, -1, np.int64)
        remap[ids] = np.arange(len(ids))
        keep = np.flatnonzero(np.isin(labels, ids))
        return keep, remap[labels[keep]].astype(np.int32)

    def load(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """The task's examples of a split in memory: images (N,H,W,C) uint8 and task labels (N,)
        int32. For small datasets of equal-size images (the embedded default)."""
        keep, labels = self.examples(split)
        images = self.split(split).images(keep)
        if len({im.shape for im in images}) > 1:
            raise ValueError(f"{self.dataset!r}/{split!r} images differ in size; use "
                             "eval_batches / calibration_batches with a model's eval transform")
        return np.stack(images) if images else np.zeros((0, 0, 0, 0), np.uint8), labels

    def load_resized(self, split: str, recipe: Preprocess, *, per_class: int = 0,
                     seed: int = 0, batch_size: int = 128) -> tuple[np.ndarray, np.ndarray]:
        """The task's examples of a split as a model sees them: images of any size and mode
        through ``recipe``'s resize + center crop (``preprocess.to_input_size``), (N, S, S, C)
        uint8 with S = ``recipe.input_size`` and C its channels, and task labels (N,) int32, in
        read order. ``per_class`` > 0 keeps a seeded ``per_class`` of each class's examples
        (all of a smaller class): a cap on memory for large train splits."""
        keep, labels = self.examples(split)
        if per_class > 0:
            rng = np.random.default_rng(seed)
            chosen = [rng.choice(members, min(per_class, len(members)), replace=False)
                      for members in (np.flatnonzero(labels == c) for c in np.unique(labels))]
            chosen = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)
            keep, labels = keep[chosen], labels[chosen]
        size, channels = recipe.input_size, len(recipe.mean)
        out = np.zeros((len(keep), size, size, channels), np.uint8)
        batches = self.split(split).image_batches(keep, batch_size)
        for k, (_, images) in enumerate(tqdm(batches, total=-(-len(keep) // batch_size),
                                             desc=f"read {split}", unit="batch", leave=False,
                                             mininterval=2.0)):
            out[k * batch_size:k * batch_size + len(images)] = preprocess_lib.to_input_size(
                images, recipe)
        return out, labels

    def few_shot(self, shots: int, seed: int, split: str | None = None) -> FewShot:
        """``shots`` training examples per task class, seeded and deterministic."""
        split = split or self.train_split
        keep, labels = self.examples(split)
        chosen = few_shot_indices(labels, shots, seed, class_names=self.class_names())
        return FewShot(self, split, shots, seed, keep[chosen], labels[chosen])

    def eval_batches(self, transform: Callable[[Sequence[np.ndarray]], jax.Array],
                     batch_size: int = 256, split: str | None = None
                     ) -> Iterator[tuple[jax.Array, np.ndarray]]:
        """The task's whole test split: (model inputs (B, S, S, C) float32, task labels (B,)),
        in read order; ``transform`` is e.g. ``preprocess.eval_transform(model.preprocess)``.
        The last batch may be smaller."""
        keep, labels = self.examples(split or self.test_split)
        for k, (_, images) in enumerate(self.split(split or self.test_split)
                                        .image_batches(keep, batch_size)):
            yield transform(images), labels[k * batch_size:(k + 1) * batch_size]


@dataclasses.dataclass(frozen=True)
class FewShot:
    """A few-shot sample: ``indices`` (n,) into ``task.split(split)`` and task ``labels`` (n,)."""

    task: Task
    split: str
    shots: int
    seed: int
    indices: np.ndarray
    labels: np.ndarray

    def to_json(self) -> dict:
        return {"dataset": self.task.dataset, "classes": list(self.task.classes),
                "class_names": self.task.class_names(), "split": self.split,
                "shots": self.shots, "seed": self.seed, "indices": self.indices.tolist(),
                "labels": self.labels.tolist()}

    def save(self, path: str | os.PathLike) -> None:
        """Write the chosen example ids with the run (atomically: never a half-written file)."""
        files.write_json(path, self.to_json(), indent=1)

    @classmethod
    def load(cls, path: str | os.PathLike, task: Task) -> FewShot:
        """Read a saved sample back for ``task`` (checked to be the task it was drawn for)."""
        d = json.loads(Path(path).read_text())
        if d["dataset"] != task.dataset or d["class_names"] != task.class_names():
            raise ValueError(f"{path} was drawn for {d['dataset']!r} classes "
                             f"{d['class_names']}, not for {task}")
        return cls(task, d["split"], d["shots"], d["seed"], np.asarray(d["indices"], np.int64),
                   np.asarray(d["labels"], np.int32))


def few_shot_indices(labels: np.ndarray, shots: int, seed: int,
                     class_names: Sequence[str] | None = None) -> np.ndarray:
    """``shots`` example indices per class of ``labels`` (N,), seeded, sorted; deterministic.
    With ``class_names``, every class ``0..len(class_names)-1`` must have ``shots`` examples and
    errors name it; without, the classes are those present in ``labels``."""
    if shots < 1:
        raise ValueError(f"shots must be >= 1, got {shots}")
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(labels) if class_names is None else range(len(class_names)):
        members = np.flatnonzero(labels == c)
        if len(members) < shots:
            name = f"class {c}" + (f" ({class_names[c]!r})" if class_names is not None else "")
            raise ValueError(f"{name} has only {len(members)} examples; cannot draw {shots} "
                             "shots")
        chosen.append(rng.choice(members, shots, replace=False))
    return np.sort(np.concatenate(chosen))


@dataclasses.dataclass(frozen=True)
class TaskData:
    """A task's arrays. ``class_ids`` (K,): the source classifier row of each task label, for
    ``adapt="restrict"``."""

    train_images: np.ndarray  # (N, H, W, C) uint8, the pool the few-shot sample is drawn from
    train_labels: np.ndarray  # (N,) int in [0, K)
    test_images: np.ndarray
    test_labels: np.ndarray
    class_ids: np.ndarray | None  # None: the task's classes are not the model's (linear probe)
    class_names: tuple[str, ...]
    preprocess: Callable
    mesh: jax.sharding.Mesh | None = None  # devices (of every process) to evaluate and prune on
    # Task-agnostic images (M, H, W, C) uint8 the recovery also distils on (teacher logits only,
    # ``recover.unlabelled_share`` of every batch); None: the few-shot set alone.
    unlabelled_images: np.ndarray | None = None
    # Generic images (G, H, W, C) uint8, not of the task's classes: the task-agnostic
    # baseline's calibration set (TACO's claim: the task's own images calibrate better).
    generic_images: np.ndarray | None = None

    @classmethod
    def load(cls, task: Task, model: nnx.Module, *, labels: Sequence[str] | None = None,
             train_per_class: int = 0, seed: int = 0,
             mesh: jax.sharding.Mesh | None = None) -> TaskData:
        """``task``'s train and test images as ``model`` sees them (``Task.load_resized``
        through its stored eval recipe, ``model.preprocess``), normalised by
        ``preprocess.for_model``. ``labels``: the model's class name of each classifier row
        (``generalist.CLASS_NAMES``, a checkpoint's ``labels``): the task's classes are matched
        to rows by name (``class_ids_by_name``; None: a linear probe makes the teacher's head).
        ``train_per_class`` > 0 reads a seeded cap of each class's train images."""
        recipe = model.preprocess
        train_x, train_y = task.load_resized(task.train_split, recipe,
                                             per_class=train_per_class, seed=seed)
        test_x, test_y = task.load_resized(task.test_split, recipe)
        names = task.class_names()
        return cls(train_x, train_y, test_x, test_y, class_ids_by_name(labels, names),
                   tuple(names), preprocess_lib.for_model(model), mesh)

    def evaluate(self, model: nnx.Module) -> dict:
        """Top-1/top-5 (%) of ``model`` on the task's test split (data parallel over
        ``mesh``: each process takes its share of the test images)."""
        return fit.evaluate(model, self.test_images, self.test_labels, self.preprocess,
                            mesh=self.mesh)

    def record(self, few_shot_ids: np.ndarray, shots: int) -> dict:
        """The report's "task" entry: class names, their source classifier rows, shots per
        class, the few-shot sample's indices into the train images, test set size."""
        return {"classes": list(self.class_names),
                "source_class_ids": None if self.class_ids is None else self.class_ids.tolist(),
                "shots": shots, "few_shot_ids": np.asarray(few_shot_ids).tolist(),
                "test_images": len(self.test_labels)}


def class_ids_by_name(labels: Sequence[str] | None, names: Sequence[str]
                      ) -> np.ndarray | None:
    """The model's classifier row of each task class, matched by name, or None when the model's
    labels are unknown or miss one of the task's classes (the task teacher is then a linear
    probe: ``adapt.task_teacher``'s "auto")."""
    if labels is None:
        logging.info("The model's class names are unknown: its classifier cannot be restricted "
                     "to the task's classes by name.")
        return None
    labels = list(labels)
    missing = [n for n in names if n not in labels]
    if missing:
        logging.info("Task classes %s are not among the model's %d classes.", missing,
                     len(labels))
        return None
    return np.asarray([labels.index(n) for n in names])


def calibration_batches(images: np.ndarray | Sequence[np.ndarray], preprocess: Callable,
                        batch_size: int, *,
                        views: int = 1, augment: str = "none", seed: int = 0,
                        process_share: bool = False) -> list[jax.Array]:
    """The one builder of calibration batches (the solver's Hessians, DC-ViT's block scores).

    ``images`` (N, H, W, C) uint8 (or a sequence of images of any size that ``preprocess``
    resizes) are preprocessed, then, with ``views`` > 1, followed by
    ``views - 1`` augmented copies (``train.augment`` mode ``augment``, keys from ``seed``), so
    the Hessians see the shifts and flips a recovery trains on; the N·views inputs are cut into
    batches of ``batch_size`` (the last may be smaller). ``process_share``: each batch is this
    process's share of it (``distributed.process_shard``; all of it in a single process).
    """
    if views < 1 or batch_size < 1:
        raise ValueError(f"views and batch_size must be >= 1, got {views}, {batch_size}")
    augment_lib.validate(augment)
    if views > 1 and augment == "none":
        raise ValueError(f"views={views} needs an augmentation to make the extra views; got "
                         "augment='none'")
    x = jnp.asarray(preprocess(jnp.asarray(images) if isinstance(images, np.ndarray)
                               else images))
    keys = jax.random.split(jax.random.key(seed), views - 1)
    x = jnp.concatenate([x] + [augment_lib.augment(k, x, augment) for k in keys])
    batches = [x[i:i + batch_size] for i in range(0, len(x), batch_size)]
    if process_share:
        batches = [b[distributed.process_shard(len(b))] for b in batches]
    return batches
