"""A checkpoint's own eval recipe and class names, read from the metadata files published with
it, so a converted model keeps its source's transform instead of a family-wide guess.

* timm (Hugging Face hub ``timm/...`` repos): ``config.json`` with ``pretrained_cfg``
  (``input_size``, ``crop_pct``, ``crop_mode``, ``interpolation``, ``mean``, ``std``) and, for
  some models, ``label_names``.
* Hugging Face transformers: ``preprocessor_config.json`` (``size``, ``resample``,
  ``crop_pct`` / ``crop_size``, ``image_mean``, ``image_std``) and ``config.json``'s
  ``id2label``.

Both follow the source libraries' eval transforms: timm resizes the shorter side to
``floor(size / crop_pct)`` and center-crops; HF's ViT/DeiT processors resize both sides
(``squash``), its ConvNeXt processor the shorter side to ``shortest_edge / crop_pct``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from taco_jax.models.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess, from_crop_pct

# PIL resampling codes as Hugging Face processors store them.
_PIL_CODES = {0: "nearest", 2: "bilinear", 3: "bicubic"}


@dataclasses.dataclass(frozen=True)
class SourceMetadata:
    """What a checkpoint's metadata files say: its eval ``recipe`` and class ``labels`` (each
    None when not found) and the file each came from."""

    recipe: Preprocess | None = None
    labels: tuple[str, ...] | None = None
    found_in: dict[str, str] = dataclasses.field(default_factory=dict)


def _square(h: int, w: int, where: str) -> int:
    if h != w:
        raise ValueError(f"{where}: a {h}x{w} input; only square inputs are supported")
    return int(h)


def from_timm_config(cfg: dict[str, Any]) -> Preprocess:
    """timm's ``pretrained_cfg`` as a Preprocess (its ``input_size``, not ``test_input_size``)."""
    _, h, w = cfg["input_size"]
    size = _square(h, w, "pretrained_cfg.input_size")
    mode = cfg.get("crop_mode", "center")
    if mode != "center":
        raise ValueError(f"pretrained_cfg.crop_mode={mode!r}; only 'center' is supported")
    interpolation = cfg.get("interpolation", "bicubic")
    if interpolation not in ("bilinear", "bicubic", "nearest"):
        raise ValueError(f"pretrained_cfg.interpolation={interpolation!r}; expected bilinear, "
                         "bicubic or nearest")
    return from_crop_pct(size, float(cfg.get("crop_pct", 0.875)), interpolation=interpolation,
                         mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
                         std=tuple(cfg.get("std", IMAGENET_STD)))


def from_hf_processor(cfg: dict[str, Any]) -> Preprocess:
    """A Hugging Face image processor config as a Preprocess."""
    resample = cfg.get("resample", 2)
    if resample not in _PIL_CODES:
        raise ValueError(f"preprocessor resample={resample}; expected one of {_PIL_CODES}")
    kw = {"interpolation": _PIL_CODES[resample],
          "mean": tuple(cfg.get("image_mean", IMAGENET_MEAN)),
          "std": tuple(cfg.get("image_std", IMAGENET_STD))}
    size = cfg.get("size", 224)
    size = {"height": size, "width": size} if isinstance(size, int) else size
    if "shortest_edge" in size:  # ConvNeXt / ResNet processors
        edge = int(size["shortest_edge"])
        if edge < 384 and "crop_pct" in cfg:
            return Preprocess(edge, math.floor(edge / cfg["crop_pct"]), **kw)
        return Preprocess(edge, edge, resize_mode="squash" if edge >= 384 else "shorter", **kw)
    resized = _square(size["height"], size["width"], "preprocessor size")
    crop = cfg.get("crop_size") if cfg.get("do_center_crop") else None
    crop = resized if crop is None else _square(
        *((crop, crop) if isinstance(crop, int) else (crop["height"], crop["width"])),
        "preprocessor crop_size")
    return Preprocess(crop, resized, resize_mode="squash", **kw)


def read_source_metadata(src: str | Path) -> SourceMetadata:
    """The recipe and labels in the metadata files beside checkpoint file ``src``
    (``config.json``, ``preprocessor_config.json``); nothing found is not an error."""
    folder = Path(src).expanduser().parent
    config_file, processor_file = folder / "config.json", folder / "preprocessor_config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    recipe, labels, found = None, None, {}
    if isinstance(config.get("pretrained_cfg"), dict):
        recipe, found["recipe"] = from_timm_config(config["pretrained_cfg"]), str(config_file)
    elif processor_file.is_file():
        recipe = from_hf_processor(json.loads(processor_file.read_text()))
        found["recipe"] = str(processor_file)
    if config.get("label_names"):
        labels = tuple(str(n) for n in config["label_names"])
    elif isinstance(config.get("id2label"), dict):
        id2label = config["id2label"]
        labels = tuple(str(id2label[k]) for k in sorted(id2label, key=int))
    if labels is not None:
        found["labels"] = str(config_file)
    return SourceMetadata(recipe, labels, found)
