"""Run task-oriented transfer from a config (what ``launch/transfer.py`` calls)."""

from __future__ import annotations

import dataclasses
import json
import os
import time

import ml_collections
import numpy as np
from absl import logging

from taco_jax import checkpoint, files
from taco_jax.data import pool, source
from taco_jax.data.task import Task
from taco_jax.methods import transfer
from taco_jax.run import common
from taco_jax.train import fit


def parse(config: ml_collections.ConfigDict
          ) -> tuple[transfer.TransferConfig, common.Source, Task]:
    """Typed, validated configs (transfer; the teacher, its recipe and the task; the pool);
    raises ValueError naming a bad value before any work starts."""
    src = common.parse_source(config)
    pool = common.parse_pool(config.pool)
    if pool is None:
        raise ValueError("config.pool.dataset is empty: transfer distils on a pool; set it to "
                         f"{source.EMBEDDED!r}, a prepared tfds dataset or "
                         f"{source.IMAGE_FOLDER!r} (with config.pool.data_dir)")
    finetune_teacher = (fit.FitConfig(steps=config.teacher_finetune_steps, seed=config.seed,
                                      **_without_steps(config.finetune))
                        if config.teacher_finetune_steps > 0 else None)
    cfg = transfer.TransferConfig(
        student=config.student, student_overrides=dict(config.student_overrides),
        student_checkpoint=config.student_checkpoint,
        shots=config.shots, seed=config.seed, transfer_set=config.transfer_set,
        transfer_size=config.transfer_size, mix_labelled=config.mix_labelled,
        teacher_finetune=finetune_teacher,
        distill=fit.FitConfig(seed=config.seed, **config.distill.to_dict()),
        finetune=fit.FitConfig(seed=config.seed, **config.finetune.to_dict()),
        baselines=common.names(config.baselines), latency_batch=config.latency_batch,
        adapt=config.adapt)
    return cfg, src, pool


def _student_source(cfg: transfer.TransferConfig) -> common.ModelSource:
    """Where the student comes from: its checkpoint, or its arch and overrides."""
    if cfg.student_checkpoint:
        return common.checkpoint_source("config.student_checkpoint", cfg.student_checkpoint)
    return common.ModelSource(cfg.student, overrides_json=json.dumps(dict(cfg.student_overrides)))


def _without_steps(c: ml_collections.ConfigDict) -> dict:
    return {k: v for k, v in c.to_dict().items() if k != "steps"}


def run_transfer(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict:
    """Distil the configured generalist into the configured student; write into ``workdir``:
    config.json, few_shot_ids.json, transfer_ids.json, student/ (orbax), stages/ (per-stage
    checkpoints: a rerun resumes after the last finished stage), report.json."""
    cfg, src, pool_task = parse(config)
    workdir = common.open_workdir(config, workdir)
    done = common.finished(workdir)
    if done is not None:
        _log_summary(done)
        return done
    start = time.perf_counter()
    model, model_info, data = common.load_task_data(config, src, workdir)
    pool_names, task_names = pool_task.class_names(), list(data.class_names)
    pool_x, pool_y = common.load_pool(pool_task, config.pool.task_class_fraction, task_names,
                                      model.preprocess)
    data = dataclasses.replace(data, unlabelled_images=pool_x)
    result = transfer.compress(model, data, cfg, workdir=workdir)
    report = result.report
    transfer_ids = np.asarray(report["transfer"].pop("ids"))
    random_ids = np.asarray(report["transfer"].pop("random_ids"))
    report["transfer"]["pool_composition"] = pool.composition(
        np.arange(len(pool_y)), pool_y, pool_names, task_names)
    report["transfer"]["composition"] = {
        "random": pool.composition(random_ids, pool_y, pool_names, task_names)}
    if cfg.transfer_set in ("retrieval", "pool"):
        report["transfer"]["composition"][cfg.transfer_set] = pool.composition(
            transfer_ids, pool_y, pool_names, task_names)
    report["model"] = src.model.describe()
    student_src = dataclasses.replace(src, model=_student_source(cfg))
    report["student"] = student_src.model.describe()
    report["generalist"] = model_info
    report["environment"] = common.environment()
    report["seconds"]["total"] = time.perf_counter() - start
    files.write_json(workdir / "few_shot_ids.json", report["task"]["few_shot_ids"])
    files.write_json(workdir / "transfer_ids.json", {"set": cfg.transfer_set,
                                                     "ids": transfer_ids.tolist()})
    if not (workdir / "student").exists():
        checkpoint.save_state(workdir / "student", result.model)
    report["specialist"] = common.write_specialist(workdir, result.model, student_src,
                                                   data.class_names, "transfer")
    files.write_json(workdir / "report.json", report)
    _log_summary(report)
    return report


def _log_summary(report: dict) -> None:
    cost = report["cost"]
    lines = [f"task teacher ({cost['teacher']['params']:,} params)   top-1 "
             f"{report['dense']['top1']:6.2f}%",
             f"student, {report['transfer']['set']} transfer ({cost['student']['params']:,} "
             f"params, {cost['teacher']['latency_s'] / cost['student']['latency_s']:.1f}x "
             f"faster)   top-1 {report['compressed']['top1']:6.2f}%"]
    lines += [f"{k} transfer set: {c['task_class_fraction']:.1%} task-class images"
              for k, c in report["transfer"]["composition"].items()]
    lines += [f"baseline {k:<14} top-1 {b['top1']:6.2f}%" for k, b in report["baselines"].items()]
    logging.info("Summary:\n  %s", "\n  ".join(lines))
