"""Test set-up: GPU detection, one compilation cache. Slow tests are excluded by default and
the rest run on several workers (see pyproject addopts)."""

import os

# Workers share a GPU: none may take most of its memory up front (JAX's default is 75%).
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

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


_CREATED_CACHE = []


def pytest_configure(config):
    """One persistent XLA compilation cache for the session, shared with the workers and the
    launchers the tests start as subprocesses (through the environment): a function compiled
    again with the same program, in another test or process, is read back, not recompiled."""
    import tempfile

    if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # the controller: workers inherit it
        os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="taco-jax-xla-")
        _CREATED_CACHE.append(os.environ["JAX_COMPILATION_CACHE_DIR"])
    # Every program, however quick to compile, as the launchers do (``memory.configure_process``):
    # the compiling loops drop programs from memory (``memory.ProgramBudget``), and reading a
    # small one back beats compiling it again (an in-process TACO test: 65 s -> 52 s).
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs",
                      float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))


def pytest_unconfigure(config):
    import shutil

    for path in _CREATED_CACHE:
        shutil.rmtree(path, ignore_errors=True)
