"""A finished run's specialist as one deployable file (what ``launch/export.py`` calls): ONNX
(checked against JAX in onnxruntime, ``export.onnx``) or safetensors (read back and checked,
``export.safetensors``), each checked on a sample of the run's own test images when they can be
read, else on random inputs at the model's input size."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from taco_jax import files
from taco_jax.data import preprocess
from taco_jax.export import onnx, safetensors, specialist
from taco_jax.run import common

FORMATS = ("onnx", "safetensors")


def parity_sample(workdir: Path, model: nnx.Module, batch_size: int) -> tuple[np.ndarray, str]:
    """(B, S, S, C) float32 model inputs, normalised, and what they are: the first
    ``batch_size`` test images of the run's task (``config.json``), or when those cannot be
    read, seeded standard-normal inputs at the model's input size."""
    config = workdir / "config.json"
    if config.is_file():
        try:
            task = common.parse_task(ml_collections.ConfigDict(
                json.loads(config.read_text())["task"]))
            per_class = -(-batch_size // max(len(task.class_names()), 1))
            x, _ = task.load_resized(task.test_split, model.preprocess, per_class=per_class)
            if len(x):
                x = x[:batch_size]
                normalized = np.asarray(preprocess.for_model(model)(jnp.asarray(x)))
                return normalized, f"{len(x)} {task.test_split} images of the run's task"
        except (ValueError, KeyError, OSError) as e:
            logging.warning("the run's task images cannot be read (%s); random inputs instead",
                            e)
    p = model.preprocess
    x = np.random.default_rng(0).standard_normal(
        (batch_size, p.input_size, p.input_size, len(p.mean)), np.float32)
    return x, f"{batch_size} random inputs"


def export_workdir(workdir: str | os.PathLike, fmt: str, out: str | os.PathLike | None = None,
                   *, batch_size: int = 8) -> dict[str, Any]:
    """Export ``workdir``'s specialist as ``fmt`` ('onnx' or 'safetensors') to ``out`` (default
    ``<workdir>/export/specialist.<fmt>``), checked on ``parity_sample``; nothing is written
    when a check fails (ValueError). Returns the exporter's record plus ``sample`` (what the
    check ran on) and ``parity_max_rel_error``."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}; expected >= 1")
    workdir = Path(workdir)
    path = workdir / specialist.DIRECTORY
    if not (path / "model.json").is_file():
        raise FileNotFoundError(f"{workdir} holds no {specialist.DIRECTORY}/ (written at the end "
                                "of a single-process TACO, DC-ViT or transfer run)")
    model, meta = specialist.load_specialist(path)
    out = Path(out) if out is not None else workdir / "export" / f"specialist.{fmt}"
    sample, what = parity_sample(workdir, model, batch_size)
    if fmt == "onnx":
        result = onnx.export_onnx(model, out, sample, metadata={"model.json": json.dumps(meta)})
    else:
        result = export_safetensors_checked(model, out, meta, sample)
    result["sample"] = what
    logging.info("exported %s: %s", fmt, result)
    return result


def export_safetensors_checked(model: nnx.Module, out: Path, record: dict[str, Any],
                               sample: np.ndarray) -> dict[str, Any]:
    """``export.safetensors.export_safetensors``, then the file read back: its model's logits on
    ``sample`` must equal the specialist's exactly, else the file is removed (ValueError)."""
    with files.replaced_atomically(out) as tmp:
        result = safetensors.export_safetensors(model, tmp, record)
        rebuilt, _ = safetensors.load_safetensors(tmp)
        err = onnx.relative_error(onnx.jax_logits(rebuilt, sample),
                                  onnx.jax_logits(model, sample))
        if err != 0:
            raise ValueError(f"safetensors check failed: the model read back differs from the "
                             f"specialist by {err:.3g} (max |Δ| / max |logit|), expected 0")
    return {**result, "path": str(out), "parity_max_rel_error": err}
