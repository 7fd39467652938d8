"""What every method's run needs before and around its work: the config's source (generalist
recipe, task, pool) validated, the launcher's ``main``, the workdir, the task data, the report's
environment. Each method's run (``run.taco``, ``run.dcvit``, ``run.transfer``) builds on these."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable
from pathlib import Path

import jax
import ml_collections
import numpy as np
from absl import app, logging
from flax import nnx

from taco_jax import distributed, generalist, models
from taco_jax.data import embedded, pool, preprocess, source
from taco_jax.data.task import Task, TaskData
from taco_jax.train import fit

# The generalist's training steps on the embedded data when ``config.generalist.steps`` is 0
# (the model's default): a ViT (no convolutional prior) needs far longer on these 12k images,
# vit_mini reaching 82.6% test top-1 after 1,500 steps, 96.4% after 6,000 (BUILD_NOTES,
# session 7). These are the shipped generalists' recipes (taco_jax/assets/generalist/).
GENERALIST_STEPS = {"vit_mini": 6000}
DEFAULT_GENERALIST_STEPS = 1500


def generalist_steps(model: str, steps: int) -> int:
    """``config.generalist.steps`` resolved: ``steps``, or for 0 the model's default
    (``GENERALIST_STEPS``, else ``DEFAULT_GENERALIST_STEPS``); ValueError when negative."""
    if steps < 0:
        raise ValueError(f"config.generalist.steps={steps}; expected >= 1, or 0 for the "
                         f"model's default ({DEFAULT_GENERALIST_STEPS}, "
                         f"{GENERALIST_STEPS} by model)")
    return steps or GENERALIST_STEPS.get(model, DEFAULT_GENERALIST_STEPS)


def fit_config(c: ml_collections.ConfigDict, seed: int, **replace) -> fit.FitConfig:
    """``c`` as a FitConfig seeded with ``seed`` unless ``c`` sets its own ``seed``; the fields
    of ``replace`` (resolved values, e.g. ``steps``) take the place of ``c``'s."""
    return fit.FitConfig(**{"seed": seed, **c.to_dict(), **replace})


def parse_source(config: ml_collections.ConfigDict) -> tuple[fit.FitConfig, Task]:
    """The generalist recipe and the task of any method's config (fields ``model``, ``seed``,
    ``generalist``, ``task``), validated; raises ValueError naming a bad value.
    ``generalist.steps`` 0 is the model's default (``generalist_steps``)."""
    if config.model not in models.names():
        raise ValueError(f"config.model={config.model!r} is not a known model; valid: "
                         f"{', '.join(models.names())}")
    task = Task(config.task.dataset, tuple(config.task.classes), config.task.data_dir or None)
    if task.dataset == source.EMBEDDED:
        unknown = [c for c in task.classes
                   if isinstance(c, str) and c not in embedded.CLASS_NAMES]
        if unknown:
            raise ValueError(f"config.task.classes has {unknown}, not classes of "
                             f"{source.EMBEDDED!r}: {list(embedded.CLASS_NAMES)}")
    else:
        raise ValueError(f"config.task.dataset={task.dataset!r}: this launcher runs on the "
                         f"embedded default {source.EMBEDDED!r} for now")
    steps = generalist_steps(config.model, config.generalist.steps)
    return fit_config(config.generalist, config.seed, steps=steps), task


def parse_pool(c: ml_collections.ConfigDict) -> Task | None:
    """The generic unlabelled pool of ``config.pool`` (fields dataset, split, data_dir,
    task_class_fraction) as a Task over every class, or None when ``dataset`` is empty;
    raises ValueError naming a bad value."""
    if not c.dataset:
        return None
    if c.dataset != source.EMBEDDED:
        raise ValueError(f"config.pool.dataset={c.dataset!r}: this launcher runs on the "
                         f"embedded default {source.EMBEDDED!r} for now ('' = no pool)")
    if not 0.0 <= c.task_class_fraction <= 1.0:
        raise ValueError("config.pool.task_class_fraction must be in [0, 1] (the share of each "
                         f"task class's pool images kept), got {c.task_class_fraction}")
    return Task(c.dataset, (), c.data_dir or None, train_split=c.split)


def load_pool(pool_task: Task, task_class_fraction: float, task_names: list[str]
              ) -> tuple[np.ndarray, np.ndarray]:
    """The pool's images (M,H,W,C) and dataset labels (M,): its split with only a seeded
    ``task_class_fraction`` of each task class's images left (``pool.pool_subset``)."""
    x, y = pool_task.load(pool_task.train_split)
    kept = pool.pool_subset(y, pool_task.class_names(), task_names, task_class_fraction)
    return x[kept], y[kept]


def write_json(path: Path, obj) -> None:
    """``obj`` as JSON at ``path``, atomically (a temporary file renamed into place)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=float))
    os.replace(tmp, path)  # never a half-written file at `path`


def check_workdir(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> None:
    """A workdir holds one run: resuming needs the same resolved config (else ValueError)."""
    path = Path(workdir) / "config.json"
    if path.exists() and json.loads(path.read_text()) != resolved_config(config):
        raise ValueError(f"{workdir} holds a run of a different config ({path}); resume with "
                         "the same config or use a new --workdir")


def launcher_main(config_flag, workdir_flag, parse: Callable, work: Callable
                  ) -> Callable[[list[str]], None]:
    """The ``main`` of a method's absl launcher (``launch/*.py``): before any work, validate the
    config (``parse``) and the workdir (``check_workdir``), a bad value being an
    ``app.UsageError`` that names it; log the config; then ``work(config, workdir)``."""
    def main(argv: list[str]) -> None:
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        config, workdir = config_flag.value, workdir_flag.value
        try:
            parse(config)
            check_workdir(config, workdir)
        except ValueError as e:
            raise app.UsageError(str(e)) from None
        logging.info("Config:\n%s", config)
        work(config, workdir)

    return main


def resolved_config(config: ml_collections.ConfigDict) -> dict:
    return json.loads(config.to_json_best_effort())


def open_workdir(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> Path:
    """The run's directory, created, with its resolved config.json; refuses (ValueError) a
    workdir holding another config's run, so a resumed run never mixes two configs' stages."""
    check_workdir(config, workdir)
    workdir = Path(workdir)
    if distributed.is_main():  # several processes share the workdir: process 0 writes
        workdir.mkdir(parents=True, exist_ok=True)
        write_json(workdir / "config.json", resolved_config(config))
    distributed.barrier("workdir")
    return workdir


def environment() -> dict:
    """Where a report's figures were measured: JAX, backend, devices, machine, load."""
    return {"jax": jax.__version__, "backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()], "machine": platform.machine(),
            "cpus": os.cpu_count(), "load_average": list(os.getloadavg())}


def load_task_data(config: ml_collections.ConfigDict, generalist_config: fit.FitConfig,
                   task: Task) -> tuple[nnx.Module, dict, TaskData]:
    """The configured generalist (trained once, then cached), its info, and the task's train
    and test arrays with the generalist's input transform; the task data carries the mesh of
    every device (None on one device), so pruning and evaluation use them all."""
    model, info = generalist.load_or_train(config.model, generalist_config,
                                           data_dir=task.data_dir,
                                           cache_dir=config.cache_dir or None)
    train_x, train_y = task.load(task.train_split)
    test_x, test_y = task.load(task.test_split)
    data = TaskData(train_x, train_y, test_x, test_y, task.source_class_ids(),
                         tuple(task.class_names()), preprocess.for_model(model),
                         distributed.device_mesh())
    return model, info, data
