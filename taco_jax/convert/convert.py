"""State dict → Flax model: name detection, head size, Hugging Face defaults, preprocessing."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from flax import nnx

from taco_jax.convert.augreg_names import augreg_to_timm, is_augreg
from taco_jax.convert.hf_names import hf_to_timm, is_hf
from taco_jax.convert.load import CheckpointMismatchError, load_state_dict_into
from taco_jax.models import create, names
from taco_jax.models.convnext import ConvNeXt
from taco_jax.models.preprocess import PRESETS
from taco_jax.models.vit import VisionTransformer

NAMINGS = ("auto", "timm", "hf", "augreg")

# Hugging Face configs use LayerNorm eps 1e-12 where timm uses 1e-6.
_HF_OVERRIDES: dict[type, dict[str, Any]] = {
    VisionTransformer: {"norm_eps": 1e-12},
    ConvNeXt: {"head_norm_eps": 1e-12},
}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What rebuilds a converted model: ``create(arch, num_classes=..., **overrides)``."""

    arch: str
    num_classes: int
    overrides: dict[str, Any]


def convert_state_dict(sd: dict[str, np.ndarray], arch: str, *, naming: str = "auto",
                       preprocess: str | None = None, **overrides
                       ) -> tuple[nnx.Module, ModelSpec]:
    """Build ``arch`` with the weights of ``sd``: timm / torchvision names, Hugging Face names
    (``hf``) or Google's JAX ViT ``.npz`` layout (``augreg``); ``auto`` tells them apart.

    The class count is read from the classifier weight. ``preprocess`` names a preset of
    ``taco_jax.models.PRESETS`` (default: the architecture's own). ``overrides`` go to
    ``create`` (e.g. ``img_size=384``: the position embedding is resized to match).
    The model is returned in eval mode (BatchNorm uses the running statistics).
    """
    if arch not in names():
        raise ValueError(f"unknown arch {arch!r}; valid: {', '.join(names())}")
    if naming not in NAMINGS:
        raise ValueError(f"naming must be one of {', '.join(NAMINGS)}, got {naming!r}")
    if preprocess is not None and preprocess not in PRESETS:
        raise ValueError(f"unknown preprocess preset {preprocess!r}; valid: {', '.join(PRESETS)}")
    probe = nnx.eval_shape(lambda: create(arch, num_classes=1))
    origin = None
    if naming == "auto":
        naming = "hf" if is_hf(sd) else "augreg" if is_augreg(sd) else "timm"
    if naming == "hf":
        sd, origin = hf_to_timm(sd)
        overrides = {**_HF_OVERRIDES.get(type(probe), {}), **overrides}
    elif naming == "augreg":
        sd, origin = augreg_to_timm(sd)
    num_classes = _num_classes(sd, arch, probe.head_name)
    spec = ModelSpec(arch, num_classes, overrides)
    model = nnx.eval_shape(lambda: create(arch, num_classes=num_classes, **overrides))
    load_state_dict_into(model, sd, arch=arch, origin=origin)
    if preprocess is not None:
        model.preprocess = PRESETS[preprocess].at_size(model.preprocess.input_size)
    model.eval()
    return model, spec


def _num_classes(sd: dict[str, np.ndarray], arch: str, head_name: str) -> int:
    key = f"{head_name}.weight"
    if key not in sd or np.ndim(sd[key]) != 2:
        raise CheckpointMismatchError(arch, [f"missing: {key} (the classifier, 2-D), needed to "
                                             "know the number of classes"])
    return int(sd[key].shape[0])
