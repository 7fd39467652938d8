"""Orbax checkpoints of converted models.

Layout of a checkpoint directory::

    model.json   {"format": 1, "arch", "num_classes", "overrides", "preprocess", "source",
                  "labels" (optional: the class name of each classifier row),
                  "cuts" (optional: structured cuts, consumer layer -> its kept input
                  channels and the ShrinkPair that cut them),
                  "removed" (optional: residual branches removed, "blocks.3.attn", ...)}
    state/       orbax StandardCheckpointer: params and BatchNorm statistics (nnx state)

Writing goes to a hidden temporary directory beside the target, renamed into place at the end,
so a failed conversion leaves nothing at the target.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

from taco_jax.checkpoint import restore_state, save_state
from taco_jax.convert.convert import ModelSpec
from taco_jax.models import create, names
from taco_jax.models.preprocess import Preprocess
from taco_jax.models.shrink import ShrinkPair, shrink_pair
from taco_jax.models.vit import remove_branches

FORMAT = 1


def build_abstract(spec: ModelSpec, cuts: Mapping[str, Mapping[str, Any]] | None = None,
                   removed: Sequence[str] = ()) -> nnx.Module:
    """The abstract (shape-only) model of ``spec`` with the ``removed`` residual branches
    (``vit.remove_branches``) gone and ``cuts`` applied: consumer name -> {"kept": input
    channels kept, "producers", "norms", "group_size", "repeat", "readers": the other consumers
    of a residual stream, absent before they were recorded} (its ``ShrinkPair``). Which
    channels were kept does not matter here, only how many."""
    def make() -> nnx.Module:
        model = remove_branches(create(spec.arch, num_classes=spec.num_classes,
                                       **spec.overrides), list(removed))
        for name, cut in (cuts or {}).items():
            pair = ShrinkPair(name, tuple(cut["producers"]), tuple(cut["norms"]),
                              int(cut["group_size"]), int(cut["repeat"]),
                              tuple(cut.get("readers", ())))
            shrink_pair(model, pair, np.arange(int(cut["kept"])))
        return model
    return nnx.eval_shape(make)


def save_checkpoint(model: nnx.Module, spec: ModelSpec, directory: str | Path, *,
                    source: dict[str, Any] | None = None,
                    labels: Sequence[str] | None = None,
                    cuts: Mapping[str, Mapping[str, Any]] | None = None,
                    removed: Sequence[str] = ()) -> Path:
    """Write ``model`` (params + BatchNorm stats) and how to rebuild it to a new ``directory``;
    ``labels``: the class name of each classifier row (lets a run restrict the classifier to
    a task's classes by name); ``cuts`` and ``removed``: the structured cuts and removed
    branches that made its shapes differ from ``spec``'s (``build_abstract``)."""
    if labels is not None and len(labels) != spec.num_classes:
        raise ValueError(f"{len(labels)} labels for a {spec.num_classes}-class model")
    directory = Path(directory).absolute()
    if directory.exists():
        raise FileExistsError(f"{directory} already exists; choose a new output directory")
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        meta = {"format": FORMAT, "arch": spec.arch, "num_classes": spec.num_classes,
                "overrides": spec.overrides, "preprocess": model.preprocess.to_dict(),
                "source": source or {}}
        if labels is not None:
            meta["labels"] = [str(name) for name in labels]
        if cuts:
            meta["cuts"] = {name: dict(cut) for name, cut in cuts.items()}
        if removed:
            meta["removed"] = list(removed)
        (tmp / "model.json").write_text(json.dumps(meta, indent=2) + "\n")
        save_state(tmp / "state", model)
        os.rename(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def read_meta(directory: str | Path) -> dict[str, Any]:
    """The ``model.json`` of a checkpoint directory (no weights read): arch, num_classes,
    overrides, preprocess, source and, when saved, labels. Errors name the directory."""
    directory = Path(directory).expanduser().absolute()
    meta_file = directory / "model.json"
    if not meta_file.is_file():
        raise FileNotFoundError(f"{directory} is not a taco-jax model checkpoint (no "
                                "model.json; make one with python -m launch.convert)")
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{meta_file} is not valid JSON: {e}") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{meta_file}: format {meta.get('format')!r}, expected {FORMAT}")
    missing = [k for k in ("arch", "num_classes", "overrides", "preprocess") if k not in meta]
    if missing:
        raise ValueError(f"{meta_file} lacks {missing}")
    if not (directory / "state").is_dir():
        raise FileNotFoundError(f"{directory} has model.json but no state/ (the weights)")
    return meta


def field_meta(field: str, directory: str | Path) -> dict[str, Any]:
    """``read_meta`` of the checkpoint a config field names: any error is one ValueError that
    names ``field`` and its value, and the arch must be a registered model."""
    try:
        meta = read_meta(directory)
    except (FileNotFoundError, ValueError) as e:
        raise ValueError(f"{field}={str(directory)!r}: {e}") from None
    if meta["arch"] not in names():
        raise ValueError(f"{field}={str(directory)!r} holds arch {meta['arch']!r}, not a known "
                         "model")
    return meta


def load_checkpoint(directory: str | Path) -> tuple[nnx.Module, ModelSpec]:
    """Rebuild the model saved by ``save_checkpoint`` (restored against its abstract shape,
    structured cuts included), in eval mode."""
    directory = Path(directory).expanduser().absolute()
    meta = read_meta(directory)
    spec = ModelSpec(meta["arch"], meta["num_classes"], meta["overrides"])
    model = build_abstract(spec, meta.get("cuts"), meta.get("removed", ()))
    restore_state(directory / "state", model)
    model.preprocess = Preprocess.from_dict(meta["preprocess"])
    model.eval()
    return model, spec
