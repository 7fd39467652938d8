"""Stable dotted names for the layers of an NNX model.

The solver, the sparse-layer swap and the reports all address a layer by the dotted path of
attribute names and list indices from the model root, e.g. ``blocks.3.mlp.fc1`` or
``layer2.0.conv2``. These names follow the timm/torchvision module names of the ported
architecture, so a name in a report is the name in the source checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterable

from flax import nnx

PRUNABLE_TYPES: tuple[type, ...] = (nnx.Linear, nnx.Conv)


def dotted(path: Iterable) -> str:
    """('blocks', 3, 'mlp', 'fc1') -> 'blocks.3.mlp.fc1'."""
    return ".".join(str(p) for p in path)


def named_layers(
    model: nnx.Module, types: tuple[type, ...] = PRUNABLE_TYPES
) -> dict[str, nnx.Module]:
    """All sub-modules of the given types, keyed by dotted name (sorted by name, not call order)."""
    return {
        dotted(path): node
        for path, node in nnx.iter_graph(model)
        if path and isinstance(node, types)
    }


def body_layers(
    model: nnx.Module, types: tuple[type, ...] = PRUNABLE_TYPES
) -> dict[str, nnx.Module]:
    """``named_layers`` without the classifier (``model.head_name``, when the model names one):
    the layers that pruning and the sparse kernels take by default."""
    head = getattr(model, "head_name", None)
    return {n: m for n, m in named_layers(model, types).items() if n != head}


def _split(name: str) -> list[str | int]:
    return [int(p) if p.isdigit() else p for p in name.split(".")]


def _child(node, key: str | int):
    if isinstance(key, int):
        return node[key]
    return getattr(node, key)


def get_layer(model: nnx.Module, name: str) -> nnx.Module:
    """The sub-module at a dotted name; a KeyError lists the valid prunable names if absent."""
    node = model
    try:
        for key in _split(name):
            node = _child(node, key)
    except (AttributeError, IndexError, KeyError, TypeError):
        valid = ", ".join(named_layers(model)) or "(none)"
        raise KeyError(f"no layer named {name!r} in {type(model).__name__}; "
                       f"prunable layers are: {valid}") from None
    return node


def set_layer(model: nnx.Module, name: str, layer: nnx.Module) -> None:
    """Replace the sub-module at a dotted name (e.g. a Linear by a sparse linear) in place."""
    *parent_keys, last = _split(name)
    parent = get_layer(model, ".".join(map(str, parent_keys))) if parent_keys else model
    get_layer(model, name)  # raises a clear error for a bad name
    if isinstance(last, int):
        parent[last] = layer
    else:
        setattr(parent, last, layer)


STEM = "stem"  # names the model's input layer (``model.stem_name``) wherever layers are named


def resolve_stem(model: nnx.Module, named: dict) -> dict:
    """``named`` (layer name -> anything) with the key "stem" replaced by the model's input
    layer (``model.stem_name``: conv1 of a ResNet, patch_embed.proj of a ViT, stem.0 of a
    ConvNeXt) and every name checked; ValueError naming the model's layers otherwise."""
    stem = getattr(model, "stem_name", None)
    what = type(model).__name__
    if STEM in named and stem is None:
        raise ValueError(f"{STEM!r} names the input layer, but {what} has no known stem layer; "
                         "name the layer instead")
    resolved = {(stem if name == STEM else name): v for name, v in named.items()}
    if len(resolved) != len(named):
        raise ValueError(f"{stem!r} is named twice (once as {STEM!r}) in {sorted(named)}")
    layers = named_layers(model)
    unknown = [name for name in resolved if name not in layers]
    if unknown:
        raise ValueError(f"{unknown} are not layers of the {what} ({STEM!r} = its input "
                         f"layer); its layers: {', '.join(sorted(layers))}")
    return resolved
