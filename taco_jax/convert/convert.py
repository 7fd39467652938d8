"""State dict → Flax model: name detection, head size, Hugging Face defaults, preprocessing."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
from absl import logging
from flax import nnx

from taco_jax.convert.augreg_names import augreg_to_timm, is_augreg
from taco_jax.convert.hf_names import hf_to_timm, is_hf
from taco_jax.convert.load import CheckpointMismatchError, load_state_dict_into, torch_layout
from taco_jax.convert.torchvision_names import (
    is_torchvision,
    torchvision_recipe,
    torchvision_to_timm,
)
from taco_jax.models import create, names
from taco_jax.models.convnext import ConvNeXt
from taco_jax.models.preprocess import PRESETS, Preprocess
from taco_jax.models.vit import VisionTransformer

NAMINGS = ("auto", "timm", "hf", "augreg", "torchvision")

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
                       preprocess: str | Preprocess | None = None,
                       num_classes: int | None = None,
                       **overrides) -> tuple[nnx.Module, ModelSpec]:
    """Build ``arch`` with the weights of ``sd``: timm names (also torchvision ResNets),
    Hugging Face names (``hf``), Google's JAX ViT ``.npz`` layout (``augreg``) or torchvision
    ViT / ConvNeXt names (``torchvision``); ``auto`` tells them apart.

    The class count is read from the classifier weight. A checkpoint without a classifier (a
    backbone saved with ``num_classes=0``) needs ``num_classes``: the new classifier is
    zero-initialized. ``preprocess`` is the eval recipe: a Preprocess (e.g. read from the
    checkpoint's metadata, ``convert.recipe``), a preset name of ``taco_jax.models.PRESETS``, or
    None (the architecture's own; for torchvision names, the transform torchvision publishes
    with those weights, logged). ``overrides`` go to ``create``. A ViT is built at the input
    size of its recipe, else of the checkpoint's position grid (a 384 checkpoint stays 384);
    ``img_size`` asks for another size (the position embedding is resized, and logged).
    The model is returned in eval mode (BatchNorm uses the running statistics).
    """
    if arch not in names():
        raise ValueError(f"unknown arch {arch!r}; valid: {', '.join(names())}")
    if naming not in NAMINGS:
        raise ValueError(f"naming must be one of {', '.join(NAMINGS)}, got {naming!r}")
    if isinstance(preprocess, str) and preprocess not in PRESETS:
        raise ValueError(f"unknown preprocess preset {preprocess!r}; valid: {', '.join(PRESETS)}")
    probe = nnx.eval_shape(lambda: create(arch, num_classes=1))
    foreign = foreign_layout(sd)
    if foreign is not None:
        raise CheckpointMismatchError(arch, [foreign])
    origin = None
    if naming == "auto":
        naming = detect_naming(sd)
    if naming == "hf":
        sd, origin = hf_to_timm(sd)
        overrides = {**_HF_OVERRIDES.get(type(probe), {}), **overrides}
    elif naming == "augreg":
        sd, origin = augreg_to_timm(sd)
    elif naming == "torchvision":
        try:
            sd, origin = torchvision_to_timm(sd)
        except ValueError as e:  # a layer our model has no place for
            raise CheckpointMismatchError(arch, [str(e)]) from None
    num_classes = _num_classes(sd, arch, probe.head_name, num_classes)
    if isinstance(probe, VisionTransformer) and "img_size" not in overrides:
        size = (preprocess.input_size if isinstance(preprocess, Preprocess)
                else _grid_size(sd, probe))
        if size is not None and size != probe.preprocess.input_size:
            logging.info("%s built at %d px (the checkpoint's %s)", arch, size,
                         "recipe" if isinstance(preprocess, Preprocess) else "position grid")
            overrides = {**overrides, "img_size": size}
    spec = ModelSpec(arch, num_classes, overrides)
    model = nnx.eval_shape(lambda: create(arch, num_classes=num_classes, **overrides))
    if f"{model.head_name}.weight" not in sd:
        sd = _with_zero_heads(model, sd)
    load_state_dict_into(model, sd, arch=arch, origin=origin)
    if isinstance(preprocess, Preprocess):
        if preprocess.input_size != model.preprocess.input_size and isinstance(
                model, VisionTransformer):
            raise ValueError(f"the recipe's input size {preprocess.input_size} differs from "
                             f"the model's {model.preprocess.input_size} (img_size)")
        model.preprocess = preprocess
    elif preprocess is not None:
        model.preprocess = PRESETS[preprocess].at_size(model.preprocess.input_size)
    elif naming == "torchvision":
        model.preprocess, which = torchvision_recipe(arch, model.preprocess.input_size)
        logging.info("eval recipe: %s, %s", which, model.preprocess)
    model.eval()
    return model, spec


def detect_naming(sd: dict[str, np.ndarray]) -> str:
    """The parameter naming of a state dict, as ``naming="auto"`` resolves it: "hf", "augreg",
    "torchvision" (ViT / ConvNeXt) or "timm" (also torchvision ResNets)."""
    return ("hf" if is_hf(sd) else "augreg" if is_augreg(sd)
            else "torchvision" if is_torchvision(sd) else "timm")


# Key patterns of layouts no name map reads yet, and what they are.
_FOREIGN = (
    (("layers.0.blocks.0.attn.relative_position_bias_table",), "a Swin Transformer"),
)


def foreign_layout(sd: dict[str, np.ndarray]) -> str | None:
    """One line naming the state dict's layout when it is one no name map reads (Swin), so the
    error says what the file is, not which tensors are missing; None for timm, torchvision,
    Hugging Face and Google ``.npz`` names."""
    for prefixes, what in _FOREIGN:
        if all(any(k.startswith(p) for k in sd) for p in prefixes):
            return (f"layout: this is {what} state dict, whose names taco-jax does not read; "
                    "use the timm or Hugging Face release of the same weights")
    return None


def _grid_size(sd: dict[str, np.ndarray], probe: VisionTransformer) -> int | None:
    """The input size a ViT checkpoint's square position grid was trained at, if it has one."""
    pos = sd.get("pos_embed")
    if pos is None or np.ndim(pos) != 3:
        return None
    side = math.isqrt(pos.shape[1] - probe.num_prefix_tokens)
    if side * side != pos.shape[1] - probe.num_prefix_tokens:
        return None
    return side * probe.patch_embed.proj.kernel_size[0]


def _num_classes(sd: dict[str, np.ndarray], arch: str, head_name: str,
                 requested: int | None) -> int:
    key = f"{head_name}.weight"
    if key in sd and np.ndim(sd[key]) == 2:
        found = int(sd[key].shape[0])
        if requested not in (None, found):
            raise ValueError(f"{key} has {found} classes but num_classes={requested}; leave "
                             "num_classes unset (a new task head is fitted later, on the model)")
        return found
    if requested is None:
        raise CheckpointMismatchError(arch, [
            f"missing: {key} (the classifier, 2-D), needed to know the number of classes; "
            "for a checkpoint without classifier give num_classes"])
    if requested < 1:
        raise ValueError(f"num_classes must be >= 1, got {requested}")
    return requested


def _with_zero_heads(model: nnx.Module, sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Add zero weights for the classifier(s) (``head_dist`` too) that the checkpoint lacks."""
    has_dist = getattr(model, "head_dist", None) is not None
    heads = [model.head_name] + (["head_dist"] if has_dist else [])
    layout = torch_layout(model)
    new = {f"{h}.{leaf}": np.zeros(layout[f"{h}.{leaf}"].torch_shape, np.float32)
           for h in heads for leaf in ("weight", "bias")}
    logging.warning("checkpoint has no classifier: %s zero-initialized", ", ".join(heads))
    return {**sd, **{k: v for k, v in new.items() if k not in sd}}
