"""What every method's ``compress`` returns: the compressed task model and its report."""

from __future__ import annotations

import dataclasses

import numpy as np
from flax import nnx


@dataclasses.dataclass
class CompressedModel:
    """The compressed task model, its pruning masks (layer name -> bool kernel mask; empty when
    the method leaves no masks: DC-ViT's dense cuts, transfer's student) and its report (a
    JSON-able dict: accuracies, sizes, timings, the baselines)."""

    model: nnx.Module
    masks: dict[str, np.ndarray]
    report: dict
