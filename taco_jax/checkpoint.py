"""Weights-only checkpoints of NNX models with orbax (restored against the model's own shapes)."""

from __future__ import annotations

import os
from pathlib import Path

import orbax.checkpoint as ocp
from flax import nnx


def save_state(path: str | os.PathLike, model: nnx.Module) -> None:
    """Write ``nnx.state(model)`` (params and batch statistics) to ``path`` (absolute or not).

    orbax writes into a temporary directory and renames it at the end, so an interrupted save
    never leaves a half-written checkpoint at ``path``.
    """
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(Path(path).absolute(), nnx.state(model))
    checkpointer.wait_until_finished()


def restore_state(path: str | os.PathLike, model: nnx.Module) -> nnx.Module:
    """Load a checkpoint written by ``save_state`` into ``model`` (same structure), in place."""
    path = Path(path).absolute()
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    abstract = nnx.state(nnx.eval_shape(lambda: model))
    nnx.update(model, ocp.StandardCheckpointer().restore(path, abstract))
    return model
