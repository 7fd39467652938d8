"""The specialist on disk: a run's compressed task model in the converted-checkpoint format
(``convert.save_checkpoint``: ``model.json`` + orbax ``state/``), with the task's class names as
its labels and the run it came from as its source.

So one directory rebuilds it anywhere (``load_specialist``, ``python -m launch.evaluate``), and
it is itself a model a run can start from (``--config.model.checkpoint``; its labels then name
the task's classes). Structured cuts (channels, heads, MLP neurons of the architecture's
producer/consumer pairs) are recorded in ``model.json`` and replayed on load; other changes of
shape (DC-ViT's dropped attention) do not fit the architecture and are refused (``fits_spec``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flax import nnx

from taco_jax import convert, models
from taco_jax.convert.checkpoint import build_abstract
from taco_jax.models.paths import get_layer
from taco_jax.models.shrink import infer_pairs

DIRECTORY = "specialist"  # a run's workdir/specialist


def structured_cuts(model: nnx.Module, spec: convert.ModelSpec) -> dict[str, dict[str, Any]]:
    """consumer name -> {"kept", "producers", "norms", "group_size", "repeat"} for each of the
    architecture's producer/consumer pairs (``shrink.infer_pairs``) whose consumer has fewer
    input channels in ``model`` than ``spec`` builds."""
    full = nnx.eval_shape(lambda: models.create(spec.arch, num_classes=spec.num_classes,
                                                **spec.overrides))
    cuts = {}
    for pair in infer_pairs(full):
        kept = get_layer(model, pair.consumer).in_features
        if kept != get_layer(full, pair.consumer).in_features:
            cuts[pair.consumer] = {"kept": int(kept), "producers": list(pair.producers),
                                   "norms": list(pair.norms), "group_size": pair.group_size,
                                   "repeat": pair.repeat}
    return cuts


def fits_spec(model: nnx.Module, spec: convert.ModelSpec,
              cuts: dict[str, dict[str, Any]] | None = None) -> bool:
    """Whether ``create(spec)`` with ``cuts`` replayed builds every parameter and BatchNorm
    statistic of ``model`` with the same shape."""
    abstract = build_abstract(spec, cuts)
    kinds = (nnx.Param, nnx.BatchStat)
    shapes = lambda m: {p: v.value.shape for p, v in nnx.to_flat_state(nnx.state(m, kinds))}
    return shapes(abstract) == shapes(model)


def save_specialist(directory: str | Path, model: nnx.Module, arch: str,
                    overrides: dict[str, Any], class_names: Sequence[str],
                    source: dict[str, Any]) -> Path:
    """Write ``model`` (its classifier: one row per task class, ``class_names``) to a new
    ``directory`` atomically; ``source`` says which run made it. Structured cuts are recorded
    (``structured_cuts``); ValueError when the shapes differ otherwise (``fits_spec``)."""
    spec = convert.ModelSpec(arch, len(class_names), dict(overrides))
    cuts = structured_cuts(model, spec)
    if not fits_spec(model, spec, cuts):
        raise ValueError(f"the model's shapes differ from {arch} {overrides} beyond structured "
                         "cuts (e.g. dropped blocks): it cannot be rebuilt from model.json")
    return convert.save_checkpoint(model, spec, directory, source=source, labels=class_names,
                                   cuts=cuts)


def load_specialist(directory: str | Path) -> tuple[nnx.Module, dict[str, Any]]:
    """The specialist saved by ``save_specialist``, in eval mode, with its ``model.json``
    (``labels``: the task's class names, ``preprocess``: its eval recipe, ``source``)."""
    model, _ = convert.load_checkpoint(directory)
    return model, convert.read_meta(directory)
