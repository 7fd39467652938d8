"""Read a dataset split: labels of every example and decoded images by index.

Three kinds of source, one interface (``Split``):

* a prepared tfds dataset in **array_record** format (and the embedded default
  ``taco_embedded``, prepared on first use), by name or by the path of its builder directory:
  random access through ``tfds.data_source``, no TensorFlow. ``tfds.features.Image`` bytes
  are decoded with PIL in a thread pool.
* a prepared tfds dataset in **tfrecord** format (tfds's default, e.g. most ``imagenet2012``
  preparations): read sequentially with ``builder.as_dataset``, which needs TensorFlow
  (``pip install 'taco-jax[images]'``).
* a local image folder (dataset name ``image_folder``, ``data_dir`` its root), flat
  ``<root>/<class>/<image>`` (a seeded held-out split is made) or
  ``<root>/<split>/<class>/<image>``, read with Pillow (``data.folder``): no TensorFlow.

Nothing is ever downloaded: every dataset but the embedded default must already be prepared.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import functools
import io
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from taco_jax.data import embedded, folder

EMBEDDED = "taco_embedded"
IMAGE_FOLDER = "image_folder"
_DECODE_THREADS = os.cpu_count() or 1


def _check_data_dir(data_dir: str | None) -> None:
    if data_dir is not None and not Path(data_dir).expanduser().is_dir():
        raise FileNotFoundError(f"data_dir {data_dir!r} does not exist or is not a directory")


def _needs_tensorflow(what: str) -> None:
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        raise ImportError(
            f"{what} needs TensorFlow, which is not installed; install it with "
            "`pip install 'taco-jax[images]'` (tensorflow-cpu)") from None


def _folder_root(data_dir: str | None) -> str:
    if data_dir is None:
        raise ValueError("dataset 'image_folder' needs data_dir=<root>, the folder that holds "
                         "<class>/<image> or <split>/<class>/<image> files")
    return data_dir


def builder(name: str, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
    """The tfds builder of a prepared dataset (preparing ``taco_embedded`` if needed): a
    registered name under ``data_dir``, or the path of a prepared builder directory (the
    folder holding ``dataset_info.json``, e.g. ``~/tensorflow_datasets/my_set/1.0.0``: no
    builder code needed)."""
    _check_data_dir(data_dir)
    if name == IMAGE_FOLDER:
        raise ValueError("an image folder has no tfds builder: it is read by data.folder")
    if name == EMBEDDED:
        b = embedded.TacoEmbedded(data_dir=data_dir, file_format="array_record")
        if not b.is_prepared():
            root = Path(b.data_dir_root)
            root.mkdir(parents=True, exist_ok=True)
            with open(root / f".{EMBEDDED}.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # two runs on a fresh machine prepare it once
                b = embedded.TacoEmbedded(data_dir=data_dir, file_format="array_record")
                if not b.is_prepared():
                    logging.info("Preparing the embedded dataset under %s (once, from the "
                                 "images inside its two packages: nothing is downloaded).",
                                 b.data_dir)
                    # tfds prints "Downloading and preparing dataset ...": untrue here.
                    with contextlib.redirect_stdout(io.StringIO()):
                        b.download_and_prepare()
        return b
    if (Path(name).expanduser() / "dataset_info.json").is_file():  # a prepared builder directory
        return tfds.builder_from_directory(str(Path(name).expanduser()))
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


def class_names(name: str, data_dir: str | None = None, label_key: str = "label",
                skip_bad_files: bool = False) -> list[str]:
    """The dataset's class names, in label-id order (``skip_bad_files``: ``folder.scan``'s
    ``skip_bad``, for an image folder)."""
    if name == IMAGE_FOLDER:
        return list(folder.scan(_folder_root(data_dir), skip_bad_files).classes)
    return list(builder(name, data_dir).info.features[label_key].names)


def _decode_threaded(decode: Callable[[object], np.ndarray], items: Sequence
                     ) -> list[np.ndarray]:
    """``decode`` of every item, in threads (PIL releases the GIL), in order."""
    with concurrent.futures.ThreadPoolExecutor(_DECODE_THREADS) as pool:
        return list(pool.map(decode, items))


def _decode_all(feature: tfds.features.FeatureConnector, encoded: Sequence) -> list[np.ndarray]:
    """Decode image bytes with PIL (tfds's NumPy path) in threads."""
    if not isinstance(feature, tfds.features.Image):
        return [np.asarray(e) for e in encoded]
    return _decode_threaded(feature.decode_example_np, encoded)


def decode_files(paths: Sequence[Path]) -> list[np.ndarray]:
    """Image files as RGB uint8 (H, W, 3) arrays (``folder.decode``), decoded in threads."""
    return _decode_threaded(folder.decode, paths)


def _checked_indices(indices: Sequence[int], n: int, where: str) -> list[int]:
    """``indices`` as ints, each in [0, n); IndexError naming ``where`` otherwise."""
    indices = [int(i) for i in indices]
    if indices and not (min(indices) >= 0 and max(indices) < n):
        raise IndexError(f"example index out of range [0, {n}) in {where}")
    return indices


class Split:
    """One split of a dataset: ``labels()`` (N,) of every example and ``images(indices)``.

    Indices are positions in the split's fixed read order (the order of ``labels()``); they
    are what the few-shot sampler records.
    """

    def __init__(self, dataset: str, split: str, data_dir: str | None = None,
                 image_key: str = "image", label_key: str = "label"):
        self.builder = builder(dataset, data_dir)
        if split not in self.builder.info.splits:
            raise ValueError(f"dataset {dataset!r} has no split {split!r}; it has "
                             f"{list(self.builder.info.splits)}")
        self.dataset, self.split = dataset, split
        self.image_key, self.label_key = image_key, label_key
        self.num_examples = self.builder.info.splits[split].num_examples
        self.image_feature = self.builder.info.features[image_key]
        self._skip = ({image_key: tfds.decode.SkipDecoding()}
                      if isinstance(self.image_feature, tfds.features.Image) else None)
        fmt = getattr(self.builder.info, "file_format", None)
        self.random_access = fmt is not None and fmt.value == "array_record"
        if not self.random_access:
            _needs_tensorflow(f"reading {dataset!r} (stored as {fmt.value if fmt else 'files'}, "
                              "not array_record)")
        self._labels: np.ndarray | None = None

    def _data_source(self):
        return self.builder.as_data_source(split=self.split, decoders=self._skip)

    def _stream(self) -> Iterator[dict]:
        """Every example in read order, image left encoded (TensorFlow path)."""
        ds = self.builder.as_dataset(split=self.split, shuffle_files=False, decoders=self._skip)
        return iter(tfds.as_numpy(ds))

    def labels(self) -> np.ndarray:
        """(N,) int64 label of every example; images are not decoded."""
        if self._labels is None:
            if self.random_access:
                src = self._data_source()
                rows = src.__getitems__(list(range(len(src))))
                self._labels = np.array([r[self.label_key] for r in rows], np.int64)
            else:
                self._labels = np.array([ex[self.label_key] for ex in self._stream()], np.int64)
        return self._labels

    def encoded(self, indices: Sequence[int]) -> list:
        """The stored (undecoded) images of ``indices``, in that order."""
        indices = _checked_indices(indices, self.num_examples,
                                   f"{self.dataset!r}/{self.split!r}")
        if self.random_access:
            return [r[self.image_key] for r in self._data_source().__getitems__(indices)]
        wanted = set(indices)
        found = {i: ex[self.image_key] for i, ex in enumerate(self._stream()) if i in wanted}
        return [found[i] for i in indices]

    def images(self, indices: Sequence[int]) -> list[np.ndarray]:
        """Decoded images (H, W, C) uint8 of ``indices`` (sizes may differ)."""
        return _decode_all(self.image_feature, self.encoded(indices))

    def image_batches(self, indices: Sequence[int], batch_size: int) -> Iterator[
            tuple[np.ndarray, list[np.ndarray]]]:
        """(indices chunk, decoded images) in chunks of ``batch_size``, in ``indices`` order.

        Random-access sources read each chunk on demand; streamed ones make one pass. The next
        chunk is read and decoded in a background thread while the caller uses this one."""
        if self.random_access:
            yield from _prefetched_batches(self.images, indices, batch_size)
            return
        indices = np.asarray(indices, np.int64)
        chunks = [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]
        position = {int(i): k for k, i in enumerate(indices)}
        buffer: dict[int, object] = {}
        next_chunk = 0
        for i, ex in enumerate(self._stream()):
            if i in position:
                buffer[i] = ex[self.image_key]
            while next_chunk < len(chunks) and all(int(j) in buffer for j in chunks[next_chunk]):
                chunk = chunks[next_chunk]
                yield chunk, _decode_all(self.image_feature, [buffer.pop(int(j)) for j in chunk])
                next_chunk += 1


def _prefetched_batches(images: Callable[[Sequence[int]], list[np.ndarray]],
                        indices: Sequence[int], batch_size: int
                        ) -> Iterator[tuple[np.ndarray, list[np.ndarray]]]:
    """(indices chunk, ``images(chunk)``) in chunks of ``batch_size``; the next chunk is read and
    decoded in a background thread while the caller uses this one."""
    indices = np.asarray(indices, np.int64)
    chunks = [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(images, chunks[0]) if chunks else None
        for k, chunk in enumerate(chunks):
            decoded = pending.result()
            if k + 1 < len(chunks):
                pending = pool.submit(images, chunks[k + 1])
            yield chunk, decoded


class FolderSplit:
    """One split of a local image folder (``data.folder``), with ``Split``'s interface."""

    random_access = True

    def __init__(self, root: str, split: str, skip_bad_files: bool = False):
        data = folder.scan(root, skip_bad_files)
        if split not in data.splits:
            raise ValueError(f"image folder {root!r} has no split {split!r}; it has "
                             f"{sorted(data.splits)}")
        self.dataset, self.split = IMAGE_FOLDER, split
        self.files, self._labels = data.splits[split]
        self.num_examples = len(self.files)

    def labels(self) -> np.ndarray:
        """(N,) int64 label of every example, in the split's fixed (sorted path) order."""
        return self._labels

    def images(self, indices: Sequence[int]) -> list[np.ndarray]:
        """Decoded RGB images (H, W, 3) uint8 of ``indices`` (sizes may differ)."""
        indices = _checked_indices(indices, self.num_examples,
                                   f"the image folder's {self.split!r} split")
        return decode_files([self.files[i] for i in indices])

    def image_batches(self, indices: Sequence[int], batch_size: int) -> Iterator[
            tuple[np.ndarray, list[np.ndarray]]]:
        """(indices chunk, decoded images) in chunks of ``batch_size``, in ``indices`` order."""
        yield from _prefetched_batches(self.images, indices, batch_size)


@functools.lru_cache(maxsize=16)
def open_split(dataset: str, split: str, data_dir: str | None = None,
               skip_bad_files: bool = False) -> Split | FolderSplit:
    """A cached split (its labels are read once per process); ``skip_bad_files``: an image
    folder's empty and unreadable files left out (``folder.scan``)."""
    if dataset == IMAGE_FOLDER:
        return FolderSplit(_folder_root(data_dir), split, skip_bad_files)
    return Split(dataset, split, data_dir)


def read_split(
    name: str,
    split: str,
    data_dir: str | None = None,
    keys: tuple[str, ...] = ("image", "label"),
) -> dict[str, np.ndarray]:
    """All examples of an array_record split as stacked NumPy arrays, e.g. {'image': (N,H,W,C),
    'label': (N,)}, for datasets of equal-size images that fit in memory (the embedded default).
    Larger or mixed-size sets go through ``Split.image_batches``."""
    s = open_split(name, split, data_dir)
    if not s.random_access:
        raise ValueError(f"read_split needs an array_record dataset; {name!r} is streamed")
    rows = s.builder.as_data_source(split=split).__getitems__(list(range(s.num_examples)))
    return {k: np.stack([r[k] for r in rows]) for k in keys}
