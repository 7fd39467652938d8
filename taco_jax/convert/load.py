"""Fill a Flax model from a PyTorch state dict in timm / torchvision names.

Our dotted module names are timm's, so each Flax variable has exactly one PyTorch key:
``<module path>.<leaf>`` with the leaf and layout set by the module type —
Linear ``kernel`` (in, out) ← ``weight`` (out, in); Conv ``kernel`` HWIO ← ``weight`` OIHW
(depthwise (C, 1, k, k) → (k, k, 1, C)); Layer/BatchNorm ``scale`` ← ``weight``; BatchNorm
``mean``/``var`` ← ``running_mean``/``running_var``; any other parameter (``cls_token``,
``pos_embed``, ``gamma``) keeps its name and layout.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np
from flax import nnx

from taco_jax.convert.pos_embed import resize_pos_embed
from taco_jax.models.paths import dotted, get_layer

IGNORED_SUFFIXES = ("num_batches_tracked",)


class CheckpointMismatchError(ValueError):
    """The state dict does not fit the model; ``problems`` has one line per offending tensor."""

    def __init__(self, arch: str, problems: list[str]):
        self.problems = problems
        super().__init__(f"checkpoint does not fit {arch} ({len(problems)} problems):\n  "
                         + "\n  ".join(problems))


@dataclasses.dataclass(frozen=True)
class Slot:
    """Where one PyTorch tensor goes: the Flax state path, its PyTorch shape, the layout change."""

    path: tuple
    torch_shape: tuple[int, ...]
    to_flax: Callable[[np.ndarray], np.ndarray]


def _identity(a: np.ndarray) -> np.ndarray:
    return a


def _linear(a: np.ndarray) -> np.ndarray:
    return a.T


def _conv(a: np.ndarray) -> np.ndarray:
    return a.transpose(2, 3, 1, 0)


_NORM_LEAVES = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


def _torch_leaf(owner: object, leaf: str, shape: tuple) -> tuple[str, tuple, Callable]:
    if isinstance(owner, nnx.Linear) and leaf == "kernel":
        return "weight", shape[::-1], _linear
    if isinstance(owner, nnx.Conv) and leaf == "kernel":
        return "weight", (shape[3], shape[2], shape[0], shape[1]), _conv
    if isinstance(owner, nnx.LayerNorm | nnx.BatchNorm) and leaf in _NORM_LEAVES:
        return _NORM_LEAVES[leaf], shape, _identity
    return leaf, shape, _identity


def torch_layout(model: nnx.Module) -> dict[str, Slot]:
    """Every PyTorch key the model needs (params and BatchNorm statistics), with its slot."""
    slots = {}
    for path, var in nnx.to_flat_state(nnx.state(model, (nnx.Param, nnx.BatchStat))):
        owner = get_layer(model, dotted(path[:-1])) if len(path) > 1 else model
        leaf, shape, fn = _torch_leaf(owner, str(path[-1]), tuple(var.value.shape))
        slots[dotted((*path[:-1], leaf))] = Slot(path, shape, fn)
    return slots


def load_state_dict_into(model: nnx.Module, sd: dict[str, np.ndarray], *, arch: str,
                         origin: dict[str, str] | None = None) -> None:
    """Set every parameter and BatchNorm statistic of ``model`` (which may be abstract, from
    ``nnx.eval_shape``) from ``sd``, in place. A ``pos_embed`` of another grid is resized.

    Raises CheckpointMismatchError listing each missing, unexpected or misshaped tensor (with
    expected vs found shape, in PyTorch layout) before changing anything.
    """
    origin = origin or {}
    src = lambda k: f"{k} (from {origin[k]})" if origin.get(k, k) != k else k
    slots = torch_layout(model)
    problems = [f"missing: {k} expected {list(s.torch_shape)}" for k, s in slots.items()
                if k not in sd]
    problems += [f"unexpected: {src(k)} found {list(np.shape(v))}" for k, v in sd.items()
                 if k not in slots and not k.endswith(IGNORED_SUFFIXES)]
    values = {}
    for key, slot in slots.items():
        if key not in sd:
            continue
        value = np.asarray(sd[key])
        if key == "pos_embed" and value.shape != slot.torch_shape:
            value = _resized_pos_embed(model, value, slot.torch_shape)
        if value.shape != slot.torch_shape:
            problems.append(f"wrong shape: {src(key)} expected {list(slot.torch_shape)} "
                            f"found {list(value.shape)}")
            continue
        values[slot.path] = slot.to_flax(value)
    if problems:
        raise CheckpointMismatchError(arch, problems)
    state = nnx.state(model, (nnx.Param, nnx.BatchStat))
    for path, var in nnx.to_flat_state(state):
        var.value = jnp.asarray(values[path], dtype=var.value.dtype)
    nnx.update(model, state)


def _is_square(n: int) -> bool:
    return n >= 0 and math.isqrt(n) ** 2 == n


def _resized_pos_embed(model: nnx.Module, value: np.ndarray, shape: tuple) -> np.ndarray:
    """Resize when only the patch grid differs (same width, square grids); else leave as is."""
    prefix = getattr(model, "num_prefix_tokens", 1)
    if (value.ndim != 3 or value.shape[-1] != shape[-1] or not _is_square(shape[1] - prefix)
            or not _is_square(value.shape[1] - prefix)):
        return value
    side = math.isqrt(shape[1] - prefix)
    return resize_pos_embed(value, prefix, (side, side))
