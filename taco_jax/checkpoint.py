"""Weights-only checkpoints of NNX models with orbax: params and BatchNorm statistics."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx

_WEIGHTS = (nnx.Param, nnx.BatchStat)


@contextlib.contextmanager
def quiet_orbax():
    """Orbax logs each step of every save and restore at INFO (dozens of lines); inside this
    block only warnings and errors are logged, so a run's log stays readable."""
    old = logging.get_verbosity()
    if old >= logging.INFO:
        logging.set_verbosity(logging.WARNING)
    try:
        yield
    finally:
        logging.set_verbosity(old)


def save_state(path: str | os.PathLike, model: nnx.Module) -> None:
    """Write the model's params and batch statistics (a pure dict) to ``path``.

    orbax writes into a temporary directory and renames it at the end, so an interrupted save
    never leaves a half-written checkpoint at ``path``.
    """
    state = nnx.state(model, _WEIGHTS).to_pure_dict()
    if jax.process_count() > 1:  # every process holds the same local copy: save host values
        state = jax.tree.map(np.asarray, state)
    with quiet_orbax(), ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(Path(path).absolute(), state)


def restore_state(path: str | os.PathLike, model: nnx.Module) -> nnx.Module:
    """Load a ``save_state`` checkpoint into ``model`` in place, restored against the model's
    own shapes; ``model`` may be abstract (``nnx.eval_shape``)."""
    path = Path(path).absolute()
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    state = nnx.state(model, _WEIGHTS)
    with quiet_orbax(), ocp.StandardCheckpointer() as checkpointer:
        restored = checkpointer.restore(path, state.to_pure_dict())
    nnx.replace_by_pure_dict(state, restored)
    nnx.update(model, state)
    return model
