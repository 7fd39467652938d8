"""A test-only stand-in for the few torchvision symbols timm touches at import time.

PyPI has no CPU build of torchvision, and its CUDA wheels do not load with the CPU torch used in
tests. timm imports ``torchvision.transforms``/``ops``/``datasets`` at module level but builds
models without them, so each missing name resolves to an inert placeholder class.
"""

from __future__ import annotations

import sys
import types

_MODULES = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional",
            "torchvision.ops", "torchvision.ops.misc", "torchvision.datasets",
            "torchvision.models", "torchvision.models.feature_extraction", "torchvision.utils")


class _Placeholder(type):
    """A class whose attributes are placeholder classes too (``InterpolationMode.NEAREST``)."""

    def __getattr__(cls, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Placeholder(name, (), {})


class _StandinModule(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Placeholder(name, (), {})


def import_timm():
    """Import timm with the stand-in in place, then take the stand-in out of ``sys.modules`` so
    libraries that probe for torchvision later (transformers) see none. Raises ImportError if
    torch or timm is missing."""
    import torch  # noqa: F401

    added = []
    for name in _MODULES:
        if name not in sys.modules:
            module = _StandinModule(name)
            module.__path__ = []  # a package: submodule imports resolve through sys.modules
            sys.modules[name] = module
            added.append(name)
    try:
        import timm
    finally:
        for name in added:
            del sys.modules[name]
    return timm
