"""The specialist on disk: a run's compressed task model in the converted-checkpoint format
(``convert.save_checkpoint``: ``model.json`` + orbax ``state/``), with the task's class names as
its labels and the run it came from as its source.

So one directory rebuilds it anywhere (``load_specialist``, ``python -m launch.evaluate``), and
it is itself a model a run can start from (``--config.model.checkpoint``; its labels then name
the task's classes). Models whose shapes were cut (structured pruning, DC-ViT) do not fit their
architecture's constructor and are refused (``fits_spec``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flax import nnx

from taco_jax import convert, models

DIRECTORY = "specialist"  # a run's workdir/specialist


def fits_spec(model: nnx.Module, spec: convert.ModelSpec) -> bool:
    """Whether ``create(spec)`` builds every parameter and BatchNorm statistic of ``model``
    with the same shape (no structured cuts)."""
    abstract = nnx.eval_shape(lambda: models.create(spec.arch, num_classes=spec.num_classes,
                                                    **spec.overrides))
    kinds = (nnx.Param, nnx.BatchStat)
    shapes = lambda m: {p: v.value.shape for p, v in nnx.to_flat_state(nnx.state(m, kinds))}
    return shapes(abstract) == shapes(model)


def save_specialist(directory: str | Path, model: nnx.Module, arch: str,
                    overrides: dict[str, Any], class_names: Sequence[str],
                    source: dict[str, Any]) -> Path:
    """Write ``model`` (its classifier: one row per task class, ``class_names``) to a new
    ``directory`` atomically; ``source`` says which run made it. ValueError when the model's
    shapes were cut (``fits_spec``)."""
    spec = convert.ModelSpec(arch, len(class_names), dict(overrides))
    if not fits_spec(model, spec):
        raise ValueError(f"the model's shapes differ from {arch} {overrides} (structured cuts): "
                         "it cannot be rebuilt from model.json")
    return convert.save_checkpoint(model, spec, directory, source=source, labels=class_names)


def load_specialist(directory: str | Path) -> tuple[nnx.Module, dict[str, Any]]:
    """The specialist saved by ``save_specialist``, in eval mode, with its ``model.json``
    (``labels``: the task's class names, ``preprocess``: its eval recipe, ``source``)."""
    model, _ = convert.load_checkpoint(directory)
    return model, convert.read_meta(directory)
