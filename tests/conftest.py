"""Test set-up: GPU detection. Slow tests are excluded by default (see pyproject addopts)."""

import jax
import pytest


def _has_gpu() -> bool:
    try:
        return bool(jax.devices("gpu"))
    except RuntimeError:
        return False


def pytest_collection_modifyitems(config, items):
    if _has_gpu():
        return
    skip = pytest.mark.skip(reason="needs a GPU; JAX sees none")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_task(tmp_path_factory):
    """A 20-class resnet_mini (narrow, 120 steps) and the embedded cat/cow/sheep task data."""
    from taco_jax import models
    from taco_jax.data import preprocess, source
    from taco_jax.data.task import Task
    from taco_jax.methods import taco
    from taco_jax.train import fit

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    model = models.create("resnet_mini", num_classes=20, widths=(8, 8, 16), layers=(1, 1, 1))
    train = source.read_split(source.EMBEDDED, "train", data_dir)
    normalize = preprocess.for_model(model)
    fit.fit(model, train["image"], train["label"],
            fit.FitConfig(steps=120, batch_size=64, learning_rate=3e-3), normalize)
    task = Task(source.EMBEDDED, ("cat", "cow", "sheep"), data_dir=data_dir)
    train_x, train_y = task.load("train")
    test_x, test_y = task.load("test")
    data = taco.TaskData(train_x, train_y, test_x[:300], test_y[:300], task.source_class_ids(),
                         tuple(task.class_names()), normalize)
    return model, data, train["image"]
