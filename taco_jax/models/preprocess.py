"""Eval-time preprocessing of a source checkpoint: resize, center crop, mean/std."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from numpy.typing import ArrayLike

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)
RESIZE_MODES = ("shorter", "squash")


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """How a checkpoint's eval images were made: resize (``resize_mode`` "shorter": the shorter
    side to ``resize_size``, keeping the aspect, as timm / torchvision; "squash": both sides to
    ``resize_size``, as Hugging Face's ViT processor) with ``interpolation``, center-crop
    ``input_size``², scale to [0, 1], then ``(x - mean) / std`` per channel. Models take NHWC
    float32 images that already went through this."""

    input_size: int
    resize_size: int
    interpolation: str = "bicubic"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    resize_mode: str = "shorter"

    def __post_init__(self):
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got "
                             f"{self.resize_mode!r}")
        if not 0 < self.input_size <= self.resize_size:
            raise ValueError(f"need 0 < input_size <= resize_size, got {self.input_size}, "
                             f"{self.resize_size}")
        if self.interpolation not in ("bilinear", "bicubic", "nearest"):
            raise ValueError(f"interpolation must be bilinear, bicubic or nearest, "
                             f"got {self.interpolation!r}")
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean {self.mean} and std {self.std} differ in length")
        if any(v <= 0 for v in self.std):
            raise ValueError(f"std must be > 0 per channel, got {self.std}")

    @property
    def crop_pct(self) -> float:
        return self.input_size / self.resize_size

    def at_size(self, input_size: int) -> Preprocess:
        """The same recipe for another crop size, keeping the crop fraction."""
        return dataclasses.replace(self, input_size=input_size,
                                   resize_size=round(input_size / self.crop_pct))

    def normalize(self, images: ArrayLike) -> jax.Array:
        """(..., H, W, C) float pixels in [0, 1] (already resized and cropped) → model input.

        Pure jnp, so it runs inside jitted steps."""
        x = jnp.asarray(images, jnp.float32)
        if x.shape[-1] != len(self.mean):
            raise ValueError(f"images have {x.shape[-1]} channels, preprocessing expects "
                             f"{len(self.mean)}")
        return (x - jnp.asarray(self.mean, jnp.float32)) / jnp.asarray(self.std, jnp.float32)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        return cls(**{**d, "mean": tuple(d["mean"]), "std": tuple(d["std"])})


def from_crop_pct(input_size: int, crop_pct: float, **kw) -> Preprocess:
    """timm's convention: resize to ``floor(input_size / crop_pct)`` then crop ``input_size``."""
    return Preprocess(input_size=input_size, resize_size=math.floor(input_size / crop_pct), **kw)


# Per source checkpoint family; the converter picks one with ``--preprocess``.
PRESETS: dict[str, Preprocess] = {
    # torchvision IMAGENET1K_V1 weights (ResNet): resize 256, crop 224, bilinear.
    "torchvision": Preprocess(224, 256, "bilinear"),
    # torchvision IMAGENET1K_V2 weights (ResNet-50/101): resize 232, crop 224, bilinear.
    "torchvision_v2": Preprocess(224, 232, "bilinear"),
    # timm ResNet a1/a2/a3 recipes (``resnet50.a1_in1k``): crop_pct 0.95, bicubic.
    "timm_resnet": from_crop_pct(224, 0.95, interpolation="bicubic"),
    # timm ViT augreg (``vit_*_patch16_224.augreg*``): crop_pct 0.9, bicubic, mean = std = 0.5.
    "augreg": from_crop_pct(224, 0.9, interpolation="bicubic", mean=HALF, std=HALF),
    # DeiT (``deit_*_patch16_224``): crop_pct 0.875, bicubic, ImageNet mean/std.
    "deit": from_crop_pct(224, 0.875, interpolation="bicubic"),
    # ConvNeXt (``convnext_*.fb_in1k``): crop_pct 0.875, bicubic, ImageNet mean/std.
    "convnext": from_crop_pct(224, 0.875, interpolation="bicubic"),
    # Hugging Face ``google/vit-*``: both sides straight to 224 (no crop), bilinear,
    # mean = std = 0.5.
    "hf_vit": Preprocess(224, 224, "bilinear", mean=HALF, std=HALF, resize_mode="squash"),
    # The embedded 28×28 grayscale task: no resize, pixels in [0, 1] mapped to [-1, 1].
    "mini": Preprocess(28, 28, "bilinear", mean=(0.5,), std=(0.5,)),
}
