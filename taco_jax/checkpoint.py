"""Weights-only checkpoints of NNX models with orbax: params and BatchNorm statistics."""

from __future__ import annotations

import os
from pathlib import Path

import orbax.checkpoint as ocp
from flax import nnx

_WEIGHTS = (nnx.Param, nnx.BatchStat)


def save_state(path: str | os.PathLike, model: nnx.Module) -> None:
    """Write the model's params and batch statistics (a pure dict) to ``path``.

    orbax writes into a temporary directory and renames it at the end, so an interrupted save
    never leaves a half-written checkpoint at ``path``.
    """
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(Path(path).absolute(), nnx.state(model, _WEIGHTS).to_pure_dict())


def restore_state(path: str | os.PathLike, model: nnx.Module) -> nnx.Module:
    """Load a ``save_state`` checkpoint into ``model`` in place, restored against the model's
    own shapes; ``model`` may be abstract (``nnx.eval_shape``)."""
    path = Path(path).absolute()
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    state = nnx.state(model, _WEIGHTS)
    with ocp.StandardCheckpointer() as checkpointer:
        restored = checkpointer.restore(path, state.to_pure_dict())
    nnx.replace_by_pure_dict(state, restored)
    nnx.update(model, state)
    return model
