"""The model registry: one ``create(name, num_classes=..., **overrides)`` for every family."""

from __future__ import annotations

from collections.abc import Callable

from flax import nnx

_REGISTRY: dict[str, Callable[..., nnx.Module]] = {}


def register(name: str) -> Callable[[Callable[..., nnx.Module]], Callable[..., nnx.Module]]:
    """Decorator: register a constructor ``fn(*, num_classes, rngs, **overrides) -> Module``."""

    def wrap(fn: Callable[..., nnx.Module]) -> Callable[..., nnx.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model name {name!r} is registered twice")
        _REGISTRY[name] = fn
        return fn

    return wrap


def names() -> list[str]:
    """Every registered model name, sorted."""
    return sorted(_REGISTRY)


def create(name: str, *, num_classes: int, rngs: nnx.Rngs | None = None, **overrides) -> nnx.Module:
    """Build a registered model with fresh parameters (seed 0 unless ``rngs`` is given)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; valid names are: {', '.join(names())}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return _REGISTRY[name](num_classes=num_classes, rngs=rngs or nnx.Rngs(0), **overrides)
