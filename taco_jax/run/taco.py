"""Run TACO from a config (what ``launch/taco.py`` calls): validate, load, compress, write."""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import ml_collections
import numpy as np
from absl import logging

from taco_jax import checkpoint, distributed, export, files
from taco_jax.data import pool
from taco_jax.methods import taco
from taco_jax.models import paths
from taco_jax.models.shrink import residual_streams
from taco_jax.prune import sequential
from taco_jax.report import plots
from taco_jax.run import common, sweep


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


def _schedule(value) -> tuple[float, ...] | str:
    """``config.schedule`` as TacoConfig takes it ("auto", or a tuple; one number is a tuple of
    one), which checks it against the target."""
    if isinstance(value, str):
        return value
    return tuple(value) if isinstance(value, tuple | list) else (value,)


def _baselines(value) -> tuple[str, ...] | str:
    """``config.baselines`` as TacoConfig takes it: "auto" or a tuple of names."""
    return value if value == "auto" else common.names(value)


def parse(config: ml_collections.ConfigDict) -> tuple[taco.TacoConfig, common.Source]:
    """Typed, validated configs from a config file; raises ValueError naming a bad value.

    Called before any work starts, so a typo fails in a second, not after training. The
    fields mean what TacoConfig's do (its defaults are the shipped demo config's); the layer
    names of ``prune.overrides`` ("stem": the model's input layer) are checked against the
    model here, built abstractly.
    """
    src = common.parse_source(config)
    overrides = _overrides(config.prune.overrides)
    abstract = src.model.abstract()  # the config against the model's layers, before any data
    try:
        paths.resolve_stem(abstract, overrides)  # every name a layer of the model
    except ValueError as e:
        raise ValueError(f"config.prune.overrides of {src.model.describe()!r}: {e}") from None
    try:
        prune = sequential.PruneConfig(**{**config.prune.to_dict(), "overrides": overrides})
    except ValueError as e:
        raise ValueError(f"config.prune: {e}") from None
    try:
        taco_config = taco.TacoConfig(
            shots=config.shots, seed=config.seed, prune=prune,
            recover=common.fit_config(config.recover, config.seed),
            baselines=_baselines(config.baselines), schedule=_schedule(config.schedule),
            schedule_levels=tuple(config.schedule_levels), schedule_steps=config.schedule_steps,
            latency_batch=config.latency_batch, calibration_views=config.calibration_views,
            restore_scale=config.restore_scale,
            pool_retrieve=config.pool.retrieve, adapt=config.adapt, probe_l2=config.probe_l2)
    except ValueError as e:
        raise ValueError(f"config: {e}") from None
    layers = taco.layers_to_prune(abstract, prune)  # the pattern against the layers' shapes
    bad = sequential.untileable(abstract, prune, layers)
    if bad and (prune.resolved_allocation != "uniform" or len(bad) == len(layers)):
        first = next(iter(bad))
        raise ValueError(f"config.prune.pattern={prune.pattern!r} cannot tile {len(bad)} of the "
                         f"{len(layers)} layers to prune of {src.model.describe()!r}, e.g. "
                         f"{first}: {bad[first]}; keep those dense (prune.overrides) or choose "
                         "a pattern that divides their shapes")
    if prune.stream_sparsity and not residual_streams(abstract):
        raise ValueError(f"config.prune.stream_sparsity={prune.stream_sparsity} cuts residual "
                         f"streams, which only ResNets have; {src.model.describe()!r} has none "
                         "(set it to 0)")
    if common.parse_pool(config.pool) is None and config.pool.retrieve:
        raise ValueError(f"config.pool.retrieve={config.pool.retrieve} needs a pool to retrieve "
                         "from: set config.pool.dataset (or the variant key pool)")
    if config.sweep and jax.process_count() > 1:
        raise ValueError("config.sweep runs in a single process only; run the sweep's "
                         "sparsities as separate multi-process runs")
    if config.sweep and taco_config.prune.structured:
        raise ValueError(f"config.sweep={tuple(config.sweep)} sweeps the sparsity of masked "
                         f"patterns; for {config.prune.pattern!r} run one prune.target_speedup "
                         "(or prune.sparsity) per run")
    for s in config.sweep:
        if not 0 < s < 1:
            raise ValueError(f"config.sweep={tuple(config.sweep)}: every sparsity must be in "
                             f"(0, 1), got {s}")
    return taco_config, src


def run_taco(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict:
    """Compress the configured generalist for the configured task; write everything to workdir.

    Outputs: config.json (resolved), few_shot_ids.json, report.json, summary.png (top-1 vs
    measured speed), compressed/ (orbax state of the compressed model), masks.npz, export/ (BSR
    weights), stages/ (checkpoints: a rerun with the same config resumes), and with
    ``config.sweep`` sweep.json + sweep.png. Returns the report.
    """
    taco_config, src = parse(config)
    workdir = common.open_workdir(config, workdir)
    done = common.finished(workdir)
    if done is not None:
        _log_summary(done)
        return done
    start = time.perf_counter()
    model, model_info, data = common.load_task_data(config, src, workdir)
    pool_task, pool_info = common.parse_pool(config.pool), None
    if pool_task is not None:
        names = (pool_task.class_names(), list(data.class_names))
        pool_x, pool_y = common.load_pool(pool_task, config.pool.task_class_fraction, names[1],
                                          model.preprocess)
        data = dataclasses.replace(data, unlabelled_images=pool_x)
        pool_info = pool.composition(np.arange(len(pool_y)), pool_y, *names)
        logging.info("recovery pool (unlabelled): %s", pool_info)
    # Generic images for task_agnostic: the pool, else the dataset's other classes.
    if "task_agnostic" in taco_config.resolved_baselines():
        generic = (pool_x if pool_task is not None else
                   common.generic_images(src.task, model.preprocess,
                                         taco_config.shots * len(data.class_names), config.seed))
        data = dataclasses.replace(data, generic_images=generic)
    # compress frees the generalist once it has made the task teacher (a ResNet-50's 0.1 GB
    # through every later stage) when no one else holds it: kept here only for a sweep.
    for_sweep, handed_over = (model if config.sweep else None), [model]
    del model
    result = taco.compress(handed_over.pop(), data, taco_config, workdir=workdir)

    report = result.report
    report["model"] = src.model.describe()
    chosen = report["recovery_data"].get("pool_ids")
    if chosen is not None:
        pool_info["retrieved"] = pool.composition(np.asarray(chosen), pool_y, *names)
    report["recovery_pool"] = pool_info
    report["generalist"] = model_info
    report["environment"] = common.environment()
    checkpoint.save_state(workdir / "compressed", result.model)  # every process takes part
    if not distributed.is_main():
        return report
    files.write_json(workdir / "few_shot_ids.json", report["task"]["few_shot_ids"])
    files.write_npz(workdir / "masks.npz", result.masks)
    if result.masks:
        block = export.block_shape_for(str(taco_config.prune.pattern))
        (workdir / "export").mkdir(exist_ok=True)
        report["export"] = export.save_bsr(workdir / "export" / "bsr.npz",
                                           export.to_bsr(result.model, result.masks, block))
    report["specialist"] = common.write_specialist(workdir, result.model, src, data.class_names,
                                                   "taco")
    if config.sweep:
        report["sweep"] = sweep.run_sweep(for_sweep, data, taco_config, tuple(config.sweep),
                                          workdir / "sweep", report)
    report["seconds"]["total"] = time.perf_counter() - start
    labels = {"taco": "TACO", **{name: b.get("label", taco.BASELINE_LABELS[name])
                                 for name, b in report["baselines"].items()
                                 if isinstance(b, dict)}}
    if plots.speed_accuracy_plot(report, labels, workdir / "summary.png"):
        report["plot"] = "summary.png"
    files.write_json(workdir / "report.json", report)
    _log_summary(report)
    return report


def _speed_cell(report: dict, name: str) -> str:
    """"2.05x / 1.30x at batch 64 / 1 (xla-cpu), ..." for a timed row; "" for one not timed."""
    cells = []
    for runtime, rows in report.get("speed", {}).items():
        timed = sorted((r for r in rows.values() if isinstance(r, dict) and name in r),
                       key=lambda r: -r["batch"])
        if timed:
            cells.append(" / ".join(f"{r[name]['speedup']:.2f}x" for r in timed) + " at batch "
                         + " / ".join(str(r["batch"]) for r in timed) + f" ({runtime})")
    return ", ".join(cells)


def verdict(report: dict) -> str:
    """One sentence on the specialist's measured speed at the report's largest batch in each
    runtime: faster or slower only where the 10–90% spread of the interleaved ratios lies
    wholly on one side of 1, and what would be faster when it is not."""
    said, faster = [], False
    for runtime, rows in report.get("speed", {}).items():
        timed = [r for r in rows.values() if isinstance(r, dict) and "taco" in r]
        if not timed:
            continue
        top = max(timed, key=lambda r: r["batch"])
        row = top["taco"]
        lo, hi = row["spread"]
        word = "faster than" if lo > 1.0 else "slower than" if hi < 1.0 else "no faster than"
        faster |= lo > 1.0
        said.append(f"{row['speedup']:.2f}x ({word} dense; 10-90% of rounds {lo:.2f}-{hi:.2f}x) "
                    f"in {runtime} at batch {top['batch']}")
    if not said:
        return "TACO specialist: speed not measured (latency_batch=0)"
    text = "TACO specialist on this machine: " + "; ".join(said)
    if faster:
        return text
    if report.get("pattern", "").startswith("structured"):
        return text + ". A larger prune.target_speedup cuts more"
    return (text + f". These runtimes run {report.get('pattern', 'masked')} zeros as dense "
            "weights: prune.pattern=structured with prune.target_speedup=2 makes smaller dense "
            "shapes, which are faster")


def _log_summary(report: dict) -> None:
    size = report["size"]
    if "sparsity" in report:
        s = report["sparsity"]["pruned_layers"]
        what = f"{s['sparsity']:.0%} sparse, {s['compression']:.1f}x fewer non-zeros"
    else:
        what = (f"{report['pattern']}, {size['macs']['reduction']:.1f}x fewer MACs, "
                f"{size['params']['reduction']:.1f}x fewer parameters")
    rows = [("dense task teacher", report["dense"]["top1"], ""),
            (f"TACO ({what})", report["compressed"]["top1"], _speed_cell(report, "taco"))]
    for name, b in report["baselines"].items():
        label = b.get("label", taco.BASELINE_LABELS[name])
        rows.append((f"baseline: {label}", b["compressed"]["top1"] if "compressed" in b
                     else b.get("top1"), _speed_cell(report, name)))
    width = max(len(label) for label, _, _ in rows)
    lines = [f"{label:<{width}}  " + ("skipped" if acc is None else f"top-1 {acc:6.2f}%")
             + (f"  {speed}" if speed else "") for label, acc, speed in rows]
    lines.append(verdict(report))
    lines.append(f"run: {report['seconds']['total']:.0f} s, peak memory "
                 f"{report['environment']['peak_rss_mib'] / 1024:.1f} GiB")
    logging.info("Summary:\n  %s", "\n  ".join(lines))
