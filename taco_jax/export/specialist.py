"""The specialist on disk: a run's compressed task model in the converted-checkpoint format
(``convert.save_checkpoint``: ``model.json`` + orbax ``state/``), with the task's class names as
its labels and the run it came from as its source.

So one directory rebuilds it anywhere (``load_specialist``, ``python -m launch.evaluate``), and
it is itself a model a run can start from (``--config.model.checkpoint``; its labels then name
the task's classes). Structured cuts (channels, heads, MLP neurons of the architecture's
producer/consumer pairs) and removed residual branches (DC-ViT's dropped attention) are recorded
in ``model.json`` and replayed on load; other changes of shape (blocks dropped from the list) do
not fit the architecture and are refused (``fits_spec``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flax import nnx

from taco_jax import convert
from taco_jax.convert.checkpoint import build_abstract
from taco_jax.models.paths import get_layer
from taco_jax.models.shrink import cuts_by_consumer
from taco_jax.models.vit import removed_branches

DIRECTORY = "specialist"  # a run's workdir/specialist


def structured_cuts(model: nnx.Module, spec: convert.ModelSpec, removed: Sequence[str] = ()
                    ) -> dict[str, dict[str, Any]]:
    """consumer name -> {"kept", "producers", "norms", "group_size", "repeat", "readers"} for
    each of the architecture's producer/consumer pairs and residual streams
    (``shrink.cuts_by_consumer``; those of the ``removed`` branches gone) whose consumer has fewer
    input channels in ``model`` than ``spec`` builds."""
    full = build_abstract(spec, removed=removed)
    cuts = {}
    for pair in cuts_by_consumer(full).values():
        try:
            kept = get_layer(model, pair.consumer).in_features
        except KeyError:  # not in the model at all: fits_spec says it does not fit
            continue
        if kept != get_layer(full, pair.consumer).in_features:
            cuts[pair.consumer] = {"kept": int(kept), "producers": list(pair.producers),
                                   "norms": list(pair.norms), "group_size": pair.group_size,
                                   "repeat": pair.repeat, "readers": list(pair.readers)}
    return cuts


def fits_spec(model: nnx.Module, spec: convert.ModelSpec,
              cuts: dict[str, dict[str, Any]] | None = None, removed: Sequence[str] = ()
              ) -> bool:
    """Whether ``create(spec)`` with ``removed`` and ``cuts`` replayed builds every parameter
    and BatchNorm statistic of ``model`` with the same shape."""
    abstract = build_abstract(spec, cuts, removed)
    kinds = (nnx.Param, nnx.BatchStat)
    shapes = lambda m: {p: v.value.shape for p, v in nnx.to_flat_state(nnx.state(m, kinds))}
    return shapes(abstract) == shapes(model)


def save_specialist(directory: str | Path, model: nnx.Module, arch: str,
                    overrides: dict[str, Any], class_names: Sequence[str],
                    source: dict[str, Any]) -> Path:
    """Write ``model`` (its classifier: one row per task class, ``class_names``) to a new
    ``directory`` atomically; ``source`` says which run made it. Structured cuts are recorded
    and removed branches (``structured_cuts``, ``vit.removed_branches``); ValueError when the
    shapes differ otherwise (``fits_spec``)."""
    spec = convert.ModelSpec(arch, len(class_names), dict(overrides))
    removed = removed_branches(model)
    cuts = structured_cuts(model, spec, removed)
    if not fits_spec(model, spec, cuts, removed):
        raise ValueError(f"the model's shapes differ from {arch} {overrides} beyond structured "
                         "cuts and removed branches (e.g. dropped blocks): it cannot be rebuilt "
                         "from model.json")
    return convert.save_checkpoint(model, spec, directory, source=source, labels=class_names,
                                   cuts=cuts, removed=removed)


def load_specialist(directory: str | Path) -> tuple[nnx.Module, dict[str, Any]]:
    """The specialist saved by ``save_specialist``, in eval mode, with its ``model.json``
    (``labels``: the task's class names, ``preprocess``: its eval recipe, ``source``)."""
    model, _ = convert.load_checkpoint(directory)
    return model, convert.read_meta(directory)
