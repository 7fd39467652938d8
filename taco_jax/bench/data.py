r"""Evaluation-input throughput: images/s from stored JPEGs to normalized model inputs.

Writes ``--num_images`` JPEGs of ImageNet-like sizes (shorter side 333–500, longer side up to
500, smooth content + noise, quality 90) as a tfds dataset with an ``Image`` feature in
array_record format, then times ``Task.eval_batches`` with a checkpoint's eval transform (decode
in threads, pad, batched resize + center crop + normalize on the device), and the embedded
default's test split with the ``mini`` transform. The first pass compiles and is not timed;
every batch is ``block_until_ready``-ed.

    python -m taco_jax.bench.data --num_images=1024 --preset=deit
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np
import PIL.Image
import tensorflow_datasets as tfds
from absl import app, flags

from taco_jax.data import preprocess, source
from taco_jax.data.task import Task
from taco_jax.models import PRESETS


class TacoBenchJpeg(tfds.core.GeneratorBasedBuilder):
    """JPEG files under ``ROOT`` as a tfds dataset (one class per 100 images)."""

    VERSION = tfds.core.Version("1.0.0")
    ROOT: Path | None = None

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)),
            "label": tfds.features.ClassLabel(num_classes=10)}))

    def _split_generators(self, dl_manager):
        return {"test": self._generate_examples()}

    def _generate_examples(self):
        for i, path in enumerate(sorted(self.ROOT.glob("*.jpg"))):
            yield path.stem, {"image": str(path), "label": i % 10}


def write_jpegs(root: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for i in range(n):
        short, long = rng.integers(333, 501), rng.integers(375, 501)
        h, w = (short, max(short, long)) if rng.random() < 0.75 else (max(short, long), short)
        y, x = np.mgrid[0:h, 0:w] / rng.uniform(8, 40)
        base = np.stack([np.sin(x * (c + 1) + rng.uniform(0, 6)) * np.cos(y + c)
                         for c in range(3)], -1) * 100 + 128
        image = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        PIL.Image.fromarray(image).save(root / f"{i:06d}.jpg", quality=90)


def time_eval(task: Task, transform, batch_size: int) -> tuple[float, int]:
    """Seconds for one pass of ``task.eval_batches`` (after an untimed compiling pass)."""
    for _ in range(2):
        start, n = time.perf_counter(), 0
        for x, _ in task.eval_batches(transform, batch_size):
            jax.block_until_ready(x)
            n += len(x)
    return time.perf_counter() - start, n


def _define_flags() -> None:
    flags.DEFINE_integer("num_images", 1024, "JPEGs to write and read.")
    flags.DEFINE_enum("preset", "deit", list(PRESETS), "Eval transform (model preset).")
    flags.DEFINE_integer("batch_size", 128, "Evaluation batch size.")


def main(argv: Sequence[str]) -> None:
    del argv
    f = flags.FLAGS
    p, batch = PRESETS[f.preset], f.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "jpeg"
        root.mkdir()
        write_jpegs(root, f.num_images)
        TacoBenchJpeg.ROOT = root
        TacoBenchJpeg(data_dir=tmp, file_format="array_record").download_and_prepare()
        task = Task("taco_bench_jpeg", (), tmp, test_split="test")
        split = task.split("test")
        keep = np.arange(split.num_examples)
        t0 = time.perf_counter()
        for _ in split.image_batches(keep, batch):
            pass
        decode = time.perf_counter() - t0
        transform = preprocess.eval_transform(p)
        images = split.images(keep[:batch])
        jax.block_until_ready(transform(images))
        t0 = time.perf_counter()
        for _ in range(3):
            jax.block_until_ready(transform(images))
        device = 3 * len(images) / (time.perf_counter() - t0)
        print(f"transform only (pad + resize + crop + normalize of decoded images): "
              f"{device:.0f} img/s")
        seconds, n = time_eval(task, transform, batch)
        print(f"JPEG ~500x375 -> {p.resize_size} -> crop {p.input_size} ({p.interpolation}), "
              f"batch {batch}: read+decode only {n / decode:.0f} img/s; "
              f"full eval input {n / seconds:.0f} img/s ({n} images, {seconds:.2f} s)")
    embedded = Task(source.EMBEDDED)
    seconds, n = time_eval(embedded, preprocess.eval_transform(PRESETS["mini"]), batch)
    print(f"embedded test split (28x28, mini): {n / seconds:.0f} img/s ({n} images, "
          f"{seconds:.2f} s)")
    print(f"devices: {jax.devices()}")


if __name__ == "__main__":
    _define_flags()
    app.run(main)
