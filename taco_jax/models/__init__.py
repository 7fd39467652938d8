"""Flax NNX model zoo. ``create(name, num_classes=...)`` builds any registered model.

Importing this package registers every family (``resnet``, ``vit``, ``convnext``).
"""

from taco_jax.models import convnext, resnet, vit
from taco_jax.models.paths import dotted, get_layer, named_layers, set_layer
from taco_jax.models.preprocess import PRESETS, Preprocess
from taco_jax.models.registry import create, names, register

__all__ = ["PRESETS", "Preprocess", "convnext", "create", "dotted", "get_layer", "named_layers",
           "names", "register", "resnet", "set_layer", "vit"]
