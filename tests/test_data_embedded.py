"""The embedded default dataset: package files -> tfds array_record -> task API."""

import numpy as np
import pytest

from taco_jax.data import embedded, source
from taco_jax.data.task import Task, few_shot_indices


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def test_package_files_have_the_documented_contents():
    images, labels, ids = embedded.load_generalist_arrays()
    assert images.shape == (15000, 28, 28, 1) and images.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(labels), [1000] * 10 + [500] * 10)
    assert len(np.unique(ids)) == 15000
    # Real images, not blank arrays: silhouettes and digits cover a sizable part of the frame.
    assert 0.1 < (images > 127).mean() < 0.6


def test_split_is_stratified_disjoint_and_complete():
    _, labels, _ = embedded.load_generalist_arrays()
    train, test = embedded.split_indices(labels, "train"), embedded.split_indices(labels, "test")
    assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == 15000
    np.testing.assert_array_equal(np.bincount(labels[test]), [200] * 10 + [100] * 10)


def test_tfds_round_trip_matches_package_arrays(data_dir):
    images, labels, _ = embedded.load_generalist_arrays()
    test = source.read_split(source.EMBEDDED, "test", data_dir, keys=("image", "label", "id"))
    order = np.argsort(test["id"])
    np.testing.assert_array_equal(test["image"][order], images[test["id"][order]])
    np.testing.assert_array_equal(test["label"][order], labels[test["id"][order]])
    assert source.class_names(source.EMBEDDED, data_dir)[:3] == ["bear", "bird", "cat"]


def test_preparing_the_embedded_dataset_does_not_claim_a_download(tmp_path, capfd):
    source.builder(source.EMBEDDED, str(tmp_path))  # a fresh data_dir: prepared here
    out, err = capfd.readouterr()
    assert "Download" not in out + err  # tfds prints "Downloading and preparing dataset"
    assert source.builder(source.EMBEDDED, str(tmp_path)).is_prepared()


def test_task_subset_remaps_labels(data_dir):
    task = Task(source.EMBEDDED, ("dog", "cat", 18), data_dir=data_dir)
    np.testing.assert_array_equal(task.source_class_ids(), [4, 2, 18])
    _, y = task.load("test")
    np.testing.assert_array_equal(np.bincount(y), [200, 200, 100])
    assert task.class_names() == ["dog", "cat", "digit_8"]


def test_task_errors_name_the_bad_value(data_dir):
    with pytest.raises(ValueError, match="class 'unicorn' is not in 'taco_embedded'"):
        Task(source.EMBEDDED, ("unicorn",), data_dir=data_dir).source_class_ids()
    with pytest.raises(ValueError, match="class id 25 is out of range"):
        Task(source.EMBEDDED, (25,), data_dir=data_dir).source_class_ids()
    with pytest.raises(ValueError, match="no split 'validation'"):
        source.read_split(source.EMBEDDED, "validation", data_dir)
    with pytest.raises(FileNotFoundError, match="not prepared"):
        source.builder("mnist", data_dir=data_dir)


def test_few_shot_sampler_is_seeded_and_balanced():
    labels = np.repeat(np.arange(4), 10)
    a, b = few_shot_indices(labels, 3, seed=7), few_shot_indices(labels, 3, seed=7)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(np.bincount(labels[a]), [3, 3, 3, 3])
    assert not np.array_equal(a, few_shot_indices(labels, 3, seed=8))
    with pytest.raises(ValueError, match="has only 10 examples; cannot draw 11"):
        few_shot_indices(labels, 11, seed=0)
