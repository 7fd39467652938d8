"""Flax NNX model zoo. ``create(name, num_classes=...)`` builds any registered model."""

from taco_jax.models.paths import dotted, get_layer, named_layers, set_layer
from taco_jax.models.registry import create, names, register

__all__ = ["create", "dotted", "get_layer", "named_layers", "names", "register", "set_layer"]
