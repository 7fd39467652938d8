"""Resumable pruning: an orbax checkpoint of the model, masks and stats after each layer group.

Arrays (every model variable by dotted path, masks, kept channels) go through ``StandardSave``;
the step, the config and the stats through ``JsonSave``. Only the latest step is kept. On resume,
structured cuts are replayed first (so shapes match), then every variable is restored.
"""

from __future__ import annotations

import dataclasses
import os

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from taco_jax.checkpoint import quiet_orbax
from taco_jax.models.paths import dotted
from taco_jax.models.shrink import shrink_pair
from taco_jax.prune.result import LayerStats


def _manager(directory: str) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        os.path.abspath(directory), item_names=("arrays", "meta"),
        options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True))


def _flat_state(model: nnx.Module) -> dict[str, np.ndarray]:
    return {dotted(path): np.asarray(var.get_value())
            for path, var in nnx.to_flat_state(nnx.state(model))}


def save(directory: str, step: int, model: nnx.Module, result, config) -> None:
    """Checkpoint after ``step`` layer groups are done."""
    arrays = {"state": _flat_state(model), "masks": dict(result.masks),
              "kept": dict(result.kept)}
    arrays = {k: v for k, v in arrays.items() if v}  # orbax rejects empty subtrees
    meta = {"step": step, "config": repr(config),
            "stats": [dataclasses.asdict(s) for s in result.stats]}
    with quiet_orbax(), _manager(directory) as mngr:
        mngr.save(step, args=ocp.args.Composite(arrays=ocp.args.StandardSave(arrays),
                                                 meta=ocp.args.JsonSave(meta)))
        mngr.wait_until_finished()


def restore(directory: str, model: nnx.Module, result, config, pairs) -> int:
    """Load the latest checkpoint into ``model``/``result``; returns the groups already done."""
    with quiet_orbax(), _manager(directory) as mngr:
        step = mngr.latest_step()
        if step is None:
            return 0
        got = mngr.restore(step, args=ocp.args.Composite(arrays=ocp.args.StandardRestore(),
                                                          meta=ocp.args.JsonRestore()))
    meta, arrays = got["meta"], got["arrays"]
    if meta["config"] != repr(config):
        raise ValueError(f"checkpoint in {directory} was written with a different config:\n"
                         f"  saved:   {meta['config']}\n  current: {config!r}")
    for name in meta_order(meta):
        if name in arrays.get("kept", {}):
            shrink_pair(model, pairs[name], np.asarray(arrays["kept"][name]))
    state = nnx.state(model)
    for path, var in nnx.to_flat_state(state):
        var.set_value(jnp.asarray(arrays["state"][dotted(path)]))
    nnx.update(model, state)
    result.masks.update({k: np.asarray(v) for k, v in arrays.get("masks", {}).items()})
    result.kept.update({k: np.asarray(v) for k, v in arrays.get("kept", {}).items()})
    result.stats[:] = [LayerStats(**{**s, "shape": tuple(s["shape"])}) for s in meta["stats"]]
    return int(meta["step"])


def meta_order(meta) -> list[str]:
    return [s["name"] for s in meta["stats"]]
