"""Tasks over real tfds datasets built from image files the test writes: a prepared builder
(array_record: no TensorFlow; tfrecord: TensorFlow), tfds ImageFolder, and the embedded default."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import tensorflow_datasets as tfds

from taco_jax.data import preprocess, source
from taco_jax.data.task import FewShot, Task, calibration_batches
from taco_jax.models import Preprocess

CLASSES = ("cat", "dog", "owl", "yak")
# Examples per class in each split; 'yak' has only 2 training images.
COUNTS = {"train": (6, 5, 4, 2), "test": (3, 3, 2, 2)}
HAS_TF = importlib.util.find_spec("tensorflow") is not None
needs_tf = pytest.mark.skipif(not HAS_TF, reason="needs TensorFlow (the [images] extra)")


def _write_folder(root):
    """<root>/<split>/<class>/<i>.png with sizes that differ; returns {(split, class, i): array}."""
    rng = np.random.default_rng(0)
    written = {}
    for split, counts in COUNTS.items():
        for c, n in zip(CLASSES, counts, strict=True):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                image = rng.integers(0, 256, (20 + 3 * i, 26 + i, 3), dtype=np.uint8)
                PIL.Image.fromarray(image).save(root / split / c / f"{i}.png")
                written[(split, c, i)] = image
    return written


class FilesBuilder(tfds.core.GeneratorBasedBuilder):
    """A real tfds builder with ``Image`` features, prepared from the written files."""

    VERSION = tfds.core.Version("1.0.0")
    ROOT = None

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)),
            "label": tfds.features.ClassLabel(names=list(CLASSES))}))

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split) for split in COUNTS}

    def _generate_examples(self, split):
        for path in sorted((self.ROOT / split).glob("*/*.png")):
            yield f"{path.parent.name}/{path.stem}", {"image": str(path),
                                                      "label": path.parent.name}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    written = _write_folder(root)
    FilesBuilder.ROOT = root
    return root, written


def _prepared(tmp_path_factory, files, file_format):
    data_dir = tmp_path_factory.mktemp(f"tfds_{file_format}")
    FilesBuilder(data_dir=str(data_dir), file_format=file_format).download_and_prepare()
    return str(data_dir)


@pytest.fixture(scope="module")
def array_record_dir(tmp_path_factory, files):
    return _prepared(tmp_path_factory, files, "array_record")


def _check_task(task, written, split="test"):
    """Subset, remap and decoded pixels of a (dog, owl, cat) task against the written files."""
    keep, labels = task.examples(split)
    np.testing.assert_array_equal(np.bincount(labels), [3, 2, 3])  # dog, owl, cat
    np.testing.assert_array_equal(task.source_class_ids(), [1, 2, 0])
    assert task.class_names() == ["dog", "owl", "cat"]
    images = task.split(split).images(keep)
    pool = {k[1]: [] for k in written}
    for (s, c, _), image in written.items():
        if s == split:
            pool[c].append(image)
    for image, label in zip(images, labels, strict=True):  # each decoded image is a written one
        name = task.class_names()[label]
        assert any(im.shape == image.shape and np.array_equal(im, image) for im in pool[name])
    return keep, labels


def test_prepared_array_record_builder_without_tensorflow_path(array_record_dir, files):
    task = Task("files_builder", ("dog", "owl", "cat"), array_record_dir)
    assert task.split("test").random_access
    _check_task(task, files[1])


def test_builder_directory_by_path_needs_no_builder_code(array_record_dir, files):
    """A prepared dataset named by its builder directory (no registered builder class)."""
    directory = next(Path(array_record_dir).glob("files_builder/*/dataset_info.json")).parent
    source.open_split.cache_clear()
    task = Task(str(directory), ("dog", "owl", "cat"))
    assert task.split("test").random_access
    _check_task(task, files[1])


@needs_tf
def test_prepared_tfrecord_builder_is_read_through_tensorflow(tmp_path_factory, files,
                                                              array_record_dir):
    data_dir = _prepared(tmp_path_factory, files, "tfrecord")
    task = Task("files_builder", ("dog", "owl", "cat"), data_dir)
    assert not task.split("test").random_access
    _check_task(task, files[1])
    shots = task.few_shot(2, seed=3)
    np.testing.assert_array_equal(np.bincount(shots.labels), [2, 2, 2])
    batches = list(task.split("train").image_batches(shots.indices, 4))
    assert [len(b[1]) for b in batches] == [4, 2]


def test_image_folder_with_split_folders_needs_no_tensorflow(files, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # as if not installed
    root, written = files
    task = Task(source.IMAGE_FOLDER, ("dog", "owl", "cat"), str(root))
    assert source.class_names(source.IMAGE_FOLDER, str(root)) == list(CLASSES)
    _check_task(task, written)


def test_few_shot_sampler_is_seeded_balanced_and_saved(array_record_dir, tmp_path):
    task = Task("files_builder", ("cat", "dog", "owl"), array_record_dir)
    a, b = task.few_shot(3, seed=0), task.few_shot(3, seed=0)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(np.bincount(a.labels), [3, 3, 3])
    assert not np.array_equal(a.indices, task.few_shot(3, seed=1).indices)
    train_labels = task.split("train").labels()
    np.testing.assert_array_equal(task.source_class_ids()[a.labels], train_labels[a.indices])
    a.save(tmp_path / "few_shot.json")
    saved = json.loads((tmp_path / "few_shot.json").read_text())
    assert saved["indices"] == a.indices.tolist() and saved["seed"] == 0
    back = FewShot.load(tmp_path / "few_shot.json", task)
    np.testing.assert_array_equal(back.indices, a.indices)
    with pytest.raises(ValueError, match="was drawn for"):
        FewShot.load(tmp_path / "few_shot.json", Task("files_builder", ("owl",),
                                                      array_record_dir))


def test_calibration_and_eval_iterators(array_record_dir):
    task = Task("files_builder", ("cat", "owl"), array_record_dir)
    p = Preprocess(16, 18, "bicubic", mean=(0.5,) * 3, std=(0.25,) * 3)
    transform = preprocess.eval_transform(p)
    shots = task.few_shot(4, seed=0)
    images = task.split("train").images(shots.indices)  # of several sizes: transform resizes
    calib = calibration_batches(images, transform, batch_size=3)
    assert [x.shape for x in calib] == [(3, 16, 16, 3)] * 2 + [(2, 16, 16, 3)]
    expected = transform(task.split("train").images(shots.indices))
    np.testing.assert_allclose(np.concatenate(calib), expected, atol=1e-6)
    # Two views: the originals, then one augmented copy of each (a shift moves pixels).
    views = calibration_batches(images, transform, 8, views=2, augment="shift_flip")
    assert [x.shape for x in views] == [(8, 16, 16, 3)] * 2
    np.testing.assert_allclose(views[0], expected, atol=1e-6)
    assert not np.allclose(views[1], expected)
    with pytest.raises(ValueError, match="views=2 needs an augmentation"):
        calibration_batches(images, transform, 8, views=2)
    ev = list(task.eval_batches(transform, batch_size=4))
    keep, labels = task.examples("test")
    np.testing.assert_array_equal(np.concatenate([y for _, y in ev]), labels)
    np.testing.assert_allclose(np.concatenate([x for x, _ in ev]),
                               transform(task.split("test").images(keep)), atol=1e-6)


def test_missing_tensorflow_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # as if not installed
    with pytest.raises(ImportError, match=r"reading 'x' needs TensorFlow.*taco-jax\[images\]"):
        source._needs_tensorflow("reading 'x'")


def test_bad_input_names_the_bad_value(array_record_dir, tmp_path):
    with pytest.raises(ValueError, match="unknown tfds dataset 'no_such_dataset'"):
        Task("no_such_dataset", ("cat",), array_record_dir).source_class_ids()
    with pytest.raises(FileNotFoundError, match="data_dir '/nonexistent/tfds' does not exist"):
        Task("files_builder", ("cat",), "/nonexistent/tfds").source_class_ids()
    with pytest.raises(ValueError, match="class 'unicorn' is not in 'files_builder'"):
        Task("files_builder", ("cat", "unicorn"), array_record_dir).source_class_ids()
    with pytest.raises(ValueError, match=r"class 3 \('yak'\) has only 2 examples; cannot draw 3"):
        Task("files_builder", (), array_record_dir).few_shot(3, seed=0)
    with pytest.raises(ValueError, match="needs data_dir"):
        Task(source.IMAGE_FOLDER, ("cat",)).source_class_ids()
    with pytest.raises(ValueError, match="images differ in size"):
        Task("files_builder", ("cat",), array_record_dir).load("test")


def test_embedded_default_goes_through_the_same_api(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("embedded"))
    task = Task(source.EMBEDDED, ("cat", "dog"), data_dir)
    shots = task.few_shot(5, seed=0)
    np.testing.assert_array_equal(np.bincount(shots.labels), [5, 5])
    x, y = task.load("train")  # the in-memory path the TACO pipeline uses
    transform = preprocess.eval_transform(Preprocess(28, 28, "bilinear", (0.5,), (0.5,)))
    chosen = np.searchsorted(task.examples("train")[0], shots.indices)
    calib, = calibration_batches(x[chosen], transform, batch_size=10)
    np.testing.assert_allclose(calib, (x[chosen] / 255 - 0.5) / 0.5, atol=1e-6)
    np.testing.assert_array_equal(y[chosen], shots.labels)
    n_eval = sum(len(b) for _, b in task.eval_batches(transform, batch_size=128))
    assert n_eval == 400 and len(y) == 1600
