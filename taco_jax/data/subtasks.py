"""Built-in tasks: WordNet subtrees of ImageNet-1k (dogs, birds, vehicles, fungi, food, ...).

The class-id lists ship as data (``imagenet_subtasks.json``, made by
``make_imagenet_subtasks.py``); a prepared tfds ``imagenet2012`` under ``data_dir`` is all a
user needs: ``imagenet_subtask("dogs", data_dir=...)``. An ImageNet-layout image folder
(``<root>/<split>/<wnid>/*``) names the same classes by wnid (``subtask_classes``).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from taco_jax.data.task import Task

IMAGENET = "imagenet2012"
_FILE = Path(__file__).with_name("imagenet_subtasks.json")


@functools.cache
def _table() -> dict[str, dict]:
    return json.loads(_FILE.read_text())["tasks"]


@functools.cache
def imagenet_wnids() -> tuple[str, ...]:
    """The 1,000 ImageNet-1k wnids in tfds ``imagenet2012`` label order (the usual sorted
    order, and the classifier rows of ImageNet-1k checkpoints); installed with tfds."""
    from tensorflow_datasets.datasets.imagenet2012 import imagenet_common

    return tuple(Path(imagenet_common.label_names_file()).read_text().split())


def subtask_classes(name: str, dataset: str) -> tuple[str | int, ...]:
    """The classes of built-in subtask ``name`` as ``dataset`` names them: label ids for tfds
    ``imagenet2012``, wnids for anything else (an ImageNet-layout folder's class folders)."""
    info = imagenet_subtask_info(name)
    return tuple(info["class_ids"]) if dataset == IMAGENET else tuple(info["wnids"])


def imagenet_subtask_names() -> list[str]:
    return sorted(_table())


def imagenet_subtask_info(name: str) -> dict:
    """root synset, description, class_ids, wnids and class names of a built-in subtask."""
    if name not in _table():
        raise ValueError(f"unknown ImageNet subtask {name!r}; built-in: "
                         f"{', '.join(imagenet_subtask_names())}")
    return _table()[name]


def imagenet_subtask(name: str, data_dir: str | None = None, train_split: str = "train",
                     test_split: str = "validation") -> Task:
    """The built-in subtask ``name`` of tfds ``imagenet2012`` (its validation split tests)."""
    ids = tuple(imagenet_subtask_info(name)["class_ids"])
    return Task(IMAGENET, ids, data_dir, train_split, test_split)
