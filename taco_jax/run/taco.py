"""Run TACO from a config (what ``launch/taco.py`` calls): validate, load, compress, write."""

from __future__ import annotations

import dataclasses
import itertools
import os
import time

import jax
import ml_collections
import numpy as np
from absl import logging

from taco_jax import checkpoint, distributed, export
from taco_jax.data import pool
from taco_jax.methods import taco
from taco_jax.models import paths
from taco_jax.models.convnext import ConvNeXt
from taco_jax.models.resnet import ResNet
from taco_jax.models.vit import VisionTransformer
from taco_jax.prune import patterns, sequential
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


# ``config.prune.overrides`` may name the model's input layer "stem", whatever the family calls it.
STEM = "stem"
STEM_LAYERS = ((ResNet, "conv1"), (VisionTransformer, "patch_embed.proj"), (ConvNeXt, "stem.0"))


def _resolve_layers(overrides: dict, model: common.ModelSource) -> dict:
    """``overrides`` with "stem" replaced by the model's input layer (``STEM_LAYERS``), every
    name checked against the model's layers (the model built abstractly: no weights, no data)."""
    abstract = model.abstract()
    stem = next((name for kind, name in STEM_LAYERS if isinstance(abstract, kind)), None)
    layers = frozenset(paths.named_layers(abstract))
    if STEM in overrides and stem is None:
        raise ValueError(f"config.prune.overrides names {STEM!r}, but the model "
                         f"{model.describe()!r} has no known stem layer; name the layer instead")
    resolved = {(stem if name == STEM else name): spec for name, spec in overrides.items()}
    if len(resolved) != len(overrides):
        raise ValueError(f"config.prune.overrides names {stem!r} twice (once as {STEM!r}): "
                         f"{overrides}")
    unknown = [name for name in resolved if name not in layers]
    if unknown:
        raise ValueError(f"config.prune.overrides names {unknown}, not layers of the model "
                         f"{model.describe()!r} ({STEM!r} = its input layer); its "
                         f"layers: {', '.join(sorted(layers))}")
    return resolved


def _schedule(config: ml_collections.ConfigDict, nm: bool) -> tuple[float, ...]:
    """``config.schedule`` resolved: "auto" is the ``config.schedule_levels`` below the target
    ``config.prune.sparsity`` (none for an N:M pattern, whose one level is fixed); an explicit
    sequence (or one number) is taken as it is, checked to increase from > 0 to below the target."""
    value, target = config.schedule, config.prune.sparsity
    if isinstance(value, str):
        if value != "auto":
            raise ValueError(f"config.schedule={value!r}; expected 'auto' or a tuple of "
                             "increasing sparsities below config.prune.sparsity")
        levels = tuple(config.schedule_levels)
        bad = [x for x in levels if isinstance(x, bool) or not isinstance(x, int | float)
               or not 0 < x < 1]
        if bad:
            raise ValueError(f"config.schedule_levels has {bad}; expected sparsities in (0, 1)")
        return () if nm else tuple(sorted({float(x) for x in levels if x < target}))
    schedule = tuple(value) if isinstance(value, tuple | list) else (value,)
    if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in schedule):
        raise ValueError(f"config.schedule={value!r}; expected 'auto' or a tuple of increasing "
                         "sparsities below config.prune.sparsity")
    if schedule and nm:
        raise ValueError(f"config.schedule={schedule}: an N:M pattern "
                         f"({config.prune.pattern}) has one fixed level, nothing to prune "
                         "gradually toward; use 'auto' or ()")
    levels = (*schedule, target)
    if schedule and (schedule[0] <= 0 or any(b <= a for a, b in itertools.pairwise(levels))):
        raise ValueError(f"config.schedule={schedule} must increase from > 0 to below the "
                         f"target config.prune.sparsity={target} (or be 'auto': the "
                         f"config.schedule_levels below the target)")
    return schedule


def _allocation(config: ml_collections.ConfigDict, nm: bool) -> str:
    """``config.prune.allocation`` resolved: "auto" is "global", or "uniform" for an N:M pattern
    (one fixed level in every layer: nothing to allocate), for which any other is refused."""
    allocation = config.prune.allocation
    if allocation == "auto":
        return "uniform" if nm else "global"
    if nm and allocation != "uniform":
        raise ValueError(f"config.prune.allocation={allocation!r}: an N:M pattern "
                         f"({config.prune.pattern}) has one fixed level in every layer, nothing "
                         "to allocate; use 'auto' or 'uniform'")
    return allocation


def _final_recover_steps(config: ml_collections.ConfigDict, schedule: tuple) -> int:
    """The final step's recovery steps: what the whole budget ``config.recover.steps`` leaves
    after ``config.schedule_steps`` for each level of the schedule."""
    budget, each = config.recover.steps, config.schedule_steps
    if schedule and each < 1:
        raise ValueError(f"config.schedule_steps={each}; a schedule {schedule} needs >= 1 "
                         "recovery steps after each of its levels")
    final = budget - len(schedule) * each
    if final < 1:
        raise ValueError(f"config.recover.steps={budget} is the whole recovery budget; the "
                         f"schedule {schedule} takes {len(schedule)} x config.schedule_steps="
                         f"{each} of it, leaving {final} for the final step (needs >= 1)")
    return final


def parse(config: ml_collections.ConfigDict) -> tuple[taco.TacoConfig, common.Source]:
    """Typed, validated configs from a config file; raises ValueError naming a bad value.

    Called before any work starts, so a typo fails in a second, not after training. Resolves
    the config's defaults that depend on other fields (each documented in configs/taco/demo.py):
    ``schedule`` "auto", ``prune.allocation`` "auto", N:M patterns (no schedule, uniform),
    ``recover.steps`` as the whole recovery budget (the final step gets what the schedule
    leaves), the "stem" layer of ``prune.overrides``, ``generalist.steps`` 0 (the model's).
    """
    src = common.parse_source(config)
    nm = isinstance(patterns.parse_pattern(config.prune.pattern), patterns.NM)
    schedule = _schedule(config, nm)
    overrides = _resolve_layers(_overrides(config.prune.overrides), src.model)
    prune = sequential.PruneConfig(**{**config.prune.to_dict(), "overrides": overrides,
                                      "allocation": _allocation(config, nm)})
    recover = common.fit_config(config.recover, config.seed,
                                steps=_final_recover_steps(config, schedule))
    taco_config = taco.TacoConfig(
        shots=config.shots, seed=config.seed, prune=prune,
        recover=recover, baselines=tuple(config.baselines),
        schedule=schedule, schedule_steps=config.schedule_steps,
        latency_batch=config.latency_batch, calibration_views=config.calibration_views,
        pool_retrieve=config.pool.retrieve, adapt=config.adapt, probe_l2=config.probe_l2)
    if common.parse_pool(config.pool) is None and config.pool.retrieve:
        raise ValueError(f"config.pool.retrieve={config.pool.retrieve} needs a pool to retrieve "
                         "from: set config.pool.dataset (or the variant key pool)")
    if config.sweep and jax.process_count() > 1:
        raise ValueError("config.sweep runs in a single process only; run the sweep's "
                         "sparsities as separate multi-process runs")
    for s in config.sweep:
        if not 0 < s < 1:
            raise ValueError(f"config.sweep={tuple(config.sweep)}: every sparsity must be in "
                             f"(0, 1), got {s}")
    return taco_config, src


def run_taco(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict:
    """Compress the configured generalist for the configured task; write everything to workdir.

    Outputs: config.json (resolved), few_shot_ids.json, report.json, compressed/ (orbax state of
    the compressed model), masks.npz, export/ (BSR weights), stages/ (checkpoints: a rerun with
    the same config resumes), and with ``config.sweep`` sweep.json + sweep.png. Returns the report.
    """
    taco_config, src = parse(config)
    workdir = common.open_workdir(config, workdir)
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
    if "task_agnostic" in taco_config.baselines:  # generic images: the pool, else other classes
        generic = (pool_x if pool_task is not None else
                   common.generic_images(src.task, model.preprocess,
                                         taco_config.shots * len(data.class_names), config.seed))
        data = dataclasses.replace(data, generic_images=generic)
    result = taco.compress(model, data, taco_config, workdir=workdir)

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
    common.write_json(workdir / "few_shot_ids.json", report["task"]["few_shot_ids"])
    np.savez_compressed(workdir / "masks.npz", **{k: np.asarray(v)
                                                  for k, v in result.masks.items()})
    if result.masks:
        block = export.block_shape_for(str(taco_config.prune.pattern))
        (workdir / "export").mkdir(exist_ok=True)
        report["export"] = export.save_bsr(workdir / "export" / "bsr.npz",
                                           export.to_bsr(result.model, result.masks, block))
    report["specialist"] = common.write_specialist(workdir, result.model, src, data.class_names,
                                                   "taco")
    if config.sweep:
        report["sweep"] = sweep.run_sweep(model, data, taco_config, tuple(config.sweep),
                                          workdir / "sweep", report)
    report["seconds"]["total"] = time.perf_counter() - start
    common.write_json(workdir / "report.json", report)
    _log_summary(report)
    return report


def _log_summary(report: dict) -> None:
    s = report["sparsity"]["pruned_layers"]
    rows = [("dense task teacher", report["dense"]["top1"]),
            (f"TACO ({s['sparsity']:.0%} sparse, {s['compression']:.1f}x fewer non-zeros)",
             report["compressed"]["top1"])]
    for name, b in report["baselines"].items():
        rows.append((f"baseline: {taco.BASELINE_LABELS[name]}",
                     b["compressed"]["top1"] if "compressed" in b else b.get("top1")))
    width = max(len(label) for label, _ in rows)
    lines = [f"{label:<{width}}  " + ("skipped" if acc is None else f"top-1 {acc:6.2f}%")
             for label, acc in rows]
    lines.append(f"run: {report['seconds']['total']:.0f} s, peak memory "
                 f"{report['environment']['peak_rss_mib'] / 1024:.1f} GiB")
    logging.info("Summary:\n  %s", "\n  ".join(lines))
