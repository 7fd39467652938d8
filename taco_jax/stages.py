"""Stage checkpoints for a resumable pipeline: each finished stage leaves the model's weights
(orbax), its masks (npz) and a JSON record under ``root/<stage>/``; a rerun restores it instead of
recomputing. The JSON is written last, so a stage interrupted while saving counts as not done.
Each record has the stage's wall time and resident memory (start, end, process peak so far).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from absl import logging
from flax import nnx

from taco_jax import checkpoint, distributed, files, memory

_INFO = "info.json"


class StageStore:
    """Checkpoints of finished stages under ``root`` (None: nothing is saved or restored).

    ``memory``: stage -> its resident memory (MiB: start, end, process peak so far) as
    measured when it ran, for every stage run or restored through ``run``: a report's
    ``memory_mib`` (its ``environment`` has the process's peak)."""

    def __init__(self, root: str | os.PathLike | None):
        self.root = None if root is None else Path(root)
        self.memory: dict[str, dict] = {}

    def done(self, stage: str) -> bool:
        return self.root is not None and (self.root / stage / _INFO).exists()

    def save(self, stage: str, model: nnx.Module | None, masks: dict[str, np.ndarray] | None,
             info: dict) -> None:
        """Record a finished stage: the model's params and batch stats, masks, JSON info."""
        if self.root is None:
            return
        d = self.root / stage
        main = distributed.is_main()  # several processes: process 0 writes, all save weights
        if main and d.exists():  # leftovers of an interrupted save
            shutil.rmtree(d)
        if main:
            d.mkdir(parents=True)
        distributed.barrier(f"stage {stage}: directory")
        if model is not None:
            checkpoint.save_state(d / "model", model)
        if main and masks is not None:
            files.write_npz(d / "masks.npz", masks, compressed=False)
        if main:
            files.write_json(d / _INFO, info, indent=None)
        distributed.barrier(f"stage {stage}: saved")

    def load(self, stage: str, model: nnx.Module | None = None
             ) -> tuple[dict[str, np.ndarray] | None, dict]:
        """Restore a finished stage into ``model`` (same shapes) in place; (masks, info)."""
        d = self.root / stage
        if model is not None:
            checkpoint.restore_state(d / "model", model)
        masks = None
        if (d / "masks.npz").exists():
            with np.load(d / "masks.npz") as f:
                masks = {k: f[k] for k in f.files}
        logging.info("stage %s: restored from %s", stage, d)
        return masks, self.info(stage)

    def info(self, stage: str) -> dict:
        """A finished stage's JSON record alone (e.g. the shapes to rebuild before ``load``)."""
        return json.loads((self.root / stage / _INFO).read_text())

    def path(self, stage: str) -> Path | None:
        """A scratch directory for a stage's own finer-grained checkpoints (e.g. per layer)."""
        return None if self.root is None else self.root / f"{stage}.partial"

    def run(self, stage: str, title: str, model: nnx.Module | None,
            work: Callable[[], tuple[dict | None, dict]]) -> tuple[dict | None, dict]:
        """Run ``work`` (trains ``model`` in place; returns masks, info) as a checkpointed stage
        under a banner, or restore it into ``model`` if it is done. ``info["seconds"]`` is the
        stage's wall time when it ran."""
        logging.info("=" * 20 + " %s " + "=" * 20, title)
        start = time.perf_counter()
        if self.done(stage):
            self._drop_scratch(stage)  # a run killed between the save and this removal
            masks, info = self.load(stage, model)
            if "memory_mib" in info:
                self.memory[stage] = info["memory_mib"]
            return masks, info
        rss = memory.rss_mib()
        masks, info = work()
        info["seconds"] = time.perf_counter() - start
        memory.end_of_stage()
        used = {"start": rss, "end": memory.rss_mib(), "peak_so_far": memory.peak_rss_mib()}
        info["memory_mib"] = self.memory[stage] = used
        logging.info("stage %s: %.0f s; resident memory %s -> %s MiB, process peak so far "
                     "%.0f MiB", stage, info["seconds"], *(
                         "?" if used[k] is None else f"{used[k]:.0f}"
                         for k in ("start", "end")), used["peak_so_far"])
        self.save(stage, model, masks, info)
        memory.release_freed_memory()  # what writing the checkpoint left in malloc's arenas
        self._drop_scratch(stage)
        return masks, info

    def _drop_scratch(self, stage: str) -> None:
        """Remove a saved stage's finer checkpoints (``path``): no longer needed."""
        scratch = self.path(stage)
        if scratch is not None and scratch.exists() and distributed.is_main():
            shutil.rmtree(scratch, ignore_errors=True)
