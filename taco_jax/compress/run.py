"""Run TACO from a config (what ``launch/taco.py`` calls): validate, load, compress, write."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import jax
import ml_collections
import numpy as np
from absl import app, logging
from flax import nnx

from taco_jax import checkpoint, distributed, generalist, models
from taco_jax.compress import export, sweep, taco
from taco_jax.data import embedded, pool, preprocess, source
from taco_jax.data.task import Task
from taco_jax.prune import sequential
from taco_jax.train import fit


def _fit_config(c: ml_collections.ConfigDict, seed: int) -> fit.FitConfig:
    """``c`` as a FitConfig seeded with ``seed`` unless ``c`` sets its own ``seed``."""
    return fit.FitConfig(**{"seed": seed, **c.to_dict()})


def parse_source(config: ml_collections.ConfigDict) -> tuple[fit.FitConfig, Task]:
    """The generalist recipe and the task of any method's config (fields ``model``, ``seed``,
    ``generalist``, ``task``), validated; raises ValueError naming a bad value."""
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
    return _fit_config(config.generalist, config.seed), task


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


def _overrides(value) -> dict:
    """``config.prune.overrides`` as PruneConfig's mapping. The config form is a tuple of
    (layer name, sparsity) or (layer name, (pattern, sparsity)) pairs, which a command line can
    set for dotted layer names (ml_collections' flags refuse dotted dict keys); a mapping
    (``ConfigDict(..., allow_dotted_keys=True)`` in a config file) is taken as it is."""
    if isinstance(value, ml_collections.ConfigDict):
        return value.to_dict()
    bad = [p for p in value
           if not (isinstance(p, tuple | list) and len(p) == 2 and isinstance(p[0], str))]
    if bad:
        raise ValueError(f"config.prune.overrides has {bad}; expected (layer name, sparsity) or "
                         "(layer name, (pattern, sparsity)) pairs")
    return {name: tuple(spec) if isinstance(spec, list) else spec for name, spec in value}


def parse(config: ml_collections.ConfigDict) -> tuple[taco.TacoConfig, fit.FitConfig, Task]:
    """Typed, validated configs from a config file; raises ValueError naming a bad value.

    Called before any work starts, so a typo fails in a second, not after training.
    """
    generalist_config, task = parse_source(config)
    prune = sequential.PruneConfig(**{**config.prune.to_dict(),
                                      "overrides": _overrides(config.prune.overrides)})
    taco_config = taco.TacoConfig(
        shots=config.shots, seed=config.seed, prune=prune,
        recover=_fit_config(config.recover, config.seed), baselines=tuple(config.baselines),
        schedule=tuple(config.schedule), schedule_steps=config.schedule_steps,
        latency_batch=config.latency_batch, calibration_views=config.calibration_views,
        pool_retrieve=config.pool.retrieve, adapt=config.adapt, probe_l2=config.probe_l2)
    if parse_pool(config.pool) is None and config.pool.retrieve:
        raise ValueError(f"config.pool.retrieve={config.pool.retrieve} needs a pool to retrieve "
                         "from: set config.pool.dataset (or the variant key pool)")
    if config.sweep and jax.process_count() > 1:
        raise ValueError("config.sweep runs in a single process only; run the sweep's "
                         "sparsities as separate multi-process runs")
    for s in config.sweep:
        if not 0 < s < 1:
            raise ValueError(f"config.sweep={tuple(config.sweep)}: every sparsity must be in "
                             f"(0, 1), got {s}")
    return taco_config, generalist_config, task


def write_json(path: Path, obj) -> None:
    """``obj`` as JSON at ``path``, atomically (a temporary file renamed into place)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=float))
    os.replace(tmp, path)  # never a half-written file at `path`


def check_workdir(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> None:
    """A workdir holds one run: resuming needs the same resolved config (else ValueError)."""
    path = Path(workdir) / "config.json"
    if path.exists() and json.loads(path.read_text()) != _resolved(config):
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


def _resolved(config: ml_collections.ConfigDict) -> dict:
    return json.loads(config.to_json_best_effort())


def open_workdir(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> Path:
    """The run's directory, created, with its resolved config.json; refuses (ValueError) a
    workdir holding another config's run, so a resumed run never mixes two configs' stages."""
    check_workdir(config, workdir)
    workdir = Path(workdir)
    if distributed.is_main():  # several processes share the workdir: process 0 writes
        workdir.mkdir(parents=True, exist_ok=True)
        write_json(workdir / "config.json", _resolved(config))
    distributed.barrier("workdir")
    return workdir


def environment() -> dict:
    """Where a report's figures were measured: JAX, backend, devices, machine, load."""
    return {"jax": jax.__version__, "backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()], "machine": platform.machine(),
            "cpus": os.cpu_count(), "load_average": list(os.getloadavg())}


def load_task_data(config: ml_collections.ConfigDict, generalist_config: fit.FitConfig,
                   task: Task) -> tuple[nnx.Module, dict, taco.TaskData]:
    """The configured generalist (trained once, then cached), its info, and the task's train
    and test arrays with the generalist's input transform; the task data carries the mesh of
    every device (None on one device), so pruning and evaluation use them all."""
    model, info = generalist.load_or_train(config.model, generalist_config,
                                           data_dir=task.data_dir,
                                           cache_dir=config.cache_dir or None)
    train_x, train_y = task.load(task.train_split)
    test_x, test_y = task.load(task.test_split)
    data = taco.TaskData(train_x, train_y, test_x, test_y, task.source_class_ids(),
                         tuple(task.class_names()), preprocess.for_model(model),
                         distributed.device_mesh())
    return model, info, data


def run_taco(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict:
    """Compress the configured generalist for the configured task; write everything to workdir.

    Outputs: config.json (resolved), few_shot_ids.json, report.json, compressed/ (orbax state of
    the compressed model), masks.npz, export/ (BSR weights), stages/ (checkpoints: a rerun with
    the same config resumes), and with ``config.sweep`` sweep.json + sweep.png. Returns the report.
    """
    taco_config, generalist_config, task = parse(config)
    workdir = open_workdir(config, workdir)
    start = time.perf_counter()
    model, gen_info, data = load_task_data(config, generalist_config, task)
    pool_task, pool_info = parse_pool(config.pool), None
    if pool_task is not None:
        names = (pool_task.class_names(), list(data.class_names))
        pool_x, pool_y = load_pool(pool_task, config.pool.task_class_fraction, names[1])
        data = dataclasses.replace(data, unlabelled_images=pool_x)
        pool_info = pool.composition(np.arange(len(pool_y)), pool_y, *names)
        logging.info("recovery pool (unlabelled): %s", pool_info)
    result = taco.compress(model, data, taco_config, workdir=workdir)

    report = result.report
    report["model"] = config.model
    chosen = report["recovery_data"].get("pool_ids")
    if chosen is not None:
        pool_info["retrieved"] = pool.composition(np.asarray(chosen), pool_y, *names)
    report["recovery_pool"] = pool_info
    report["generalist"] = {k: gen_info[k] for k in ("test_top1", "test_top5", "path")}
    report["environment"] = environment()
    checkpoint.save_state(workdir / "compressed", result.model)  # every process takes part
    if not distributed.is_main():
        return report
    write_json(workdir / "few_shot_ids.json", report["task"]["few_shot_ids"])
    np.savez_compressed(workdir / "masks.npz", **{k: np.asarray(v)
                                                  for k, v in result.masks.items()})
    if result.masks:
        block = export.block_shape_for(str(taco_config.prune.pattern))
        (workdir / "export").mkdir(exist_ok=True)
        report["export"] = export.save_bsr(workdir / "export" / "bsr.npz",
                                           export.to_bsr(result.model, result.masks, block))
    if config.sweep:
        report["sweep"] = sweep.run_sweep(model, data, taco_config, tuple(config.sweep),
                                          workdir / "sweep", report)
    report["seconds"]["total"] = time.perf_counter() - start
    write_json(workdir / "report.json", report)
    _log_summary(report)
    return report


def _log_summary(report: dict) -> None:
    s = report["sparsity"]["pruned_layers"]
    rows = [("dense task teacher", report["dense"]["top1"]),
            (f"TACO ({s['sparsity']:.0%} sparse, {s['compression']:.1f}x fewer non-zeros)",
             report["compressed"]["top1"])]
    for name, b in report["baselines"].items():
        rows.append((f"baseline: {taco.BASELINE_LABELS[name]}",
                     b["compressed"]["top1"] if "compressed" in b else b["top1"]))
    width = max(len(label) for label, _ in rows)
    lines = [f"{label:<{width}}  top-1 {acc:6.2f}%" for label, acc in rows]
    logging.info("Summary:\n  %s", "\n  ".join(lines))
