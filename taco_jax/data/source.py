"""Read prepared tfds datasets (array_record) through ``tfds.data_source``, without TensorFlow.

The embedded default (``taco_embedded``) is prepared on first use from files inside installed
packages; every other dataset must already be prepared under ``data_dir`` (no network at run time).
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from taco_jax.data import embedded

EMBEDDED = "taco_embedded"


def builder(name: str, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
    """The tfds builder of a prepared dataset (preparing ``taco_embedded`` if needed)."""
    if name == EMBEDDED:
        b = embedded.TacoEmbedded(data_dir=data_dir, file_format="array_record")
        if not b.is_prepared():
            logging.info("Preparing the embedded dataset under %s (once).", b.data_dir)
            b.download_and_prepare()
        return b
    try:
        b = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise ValueError(f"unknown tfds dataset {name!r} (data_dir={data_dir!r}): {e}") from None
    if not b.is_prepared():
        raise FileNotFoundError(
            f"dataset {name!r} is not prepared under data_dir={b.data_dir_root!r}; prepare it "
            "there first (taco-jax never downloads at run time)"
        )
    return b


def class_names(name: str, data_dir: str | None = None, label_key: str = "label") -> list[str]:
    """The dataset's class names, in label-id order."""
    return list(builder(name, data_dir).info.features[label_key].names)


def read_split(
    name: str,
    split: str,
    data_dir: str | None = None,
    keys: tuple[str, ...] = ("image", "label"),
) -> dict[str, np.ndarray]:
    """All examples of a split as stacked NumPy arrays, e.g. {'image': (N,H,W,C), 'label': (N,)}.

    For datasets whose images fit in memory (the embedded default, few-shot subsets); large
    evaluation sets are streamed by the task iterators instead.
    """
    b = builder(name, data_dir)
    if split not in b.info.splits:
        raise ValueError(f"dataset {name!r} has no split {split!r}; it has {list(b.info.splits)}")
    source = b.as_data_source(split=split)
    rows = source.__getitems__(list(range(len(source))))
    return {k: np.stack([r[k] for r in rows]) for k in keys}
