"""Structured pruning's physical cut: remove channels from a producer → (norm) → consumer chain.

A ``ShrinkPair`` names a consumer layer whose input channels are pruned (``fc2``, ``attn.proj``,
``conv2``), the producer layers whose output channels are those inputs (``fc1``; ``attn.qkv``
with ``repeat=3`` for its ``[q | k | v]`` outputs; ``conv1``) and any per-channel BatchNorm in
between. ``group_size`` channels form one unit (1 for neurons/channels, ``head_dim`` for heads).
A ResNet's residual stream is one cut with several producers (the stem or a downsample, then
every block's last conv, each with its BatchNorm) and several consumers: ``consumer`` and the
other ``readers`` (every block's first conv and downsample, the head), all of which lose the
same channels (``ResNet.residual_streams``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
from flax import nnx

from taco_jax.models.paths import get_layer, named_layers


@dataclasses.dataclass(frozen=True)
class ShrinkPair:
    consumer: str
    producers: tuple[str, ...]
    norms: tuple[str, ...] = ()
    group_size: int = 1
    repeat: int = 1  # producer outputs = ``repeat`` stacked copies of the consumer's input space
    readers: tuple[str, ...] = ()  # more consumers of the same channels (a residual stream)

    @property
    def consumers(self) -> tuple[str, ...]:
        """Every layer whose input channels the cut removes, ``consumer`` first."""
        return (self.consumer, *self.readers)


def _set(var: nnx.Variable, value) -> None:
    var.set_value(jnp.asarray(value))


def producer_index(kept: np.ndarray, width: int, repeat: int) -> np.ndarray:
    """Producer output indices for kept consumer inputs (fused qkv: the same heads in q, k, v)."""
    return np.concatenate([kept + t * width for t in range(repeat)])


def shrink_pair(model: nnx.Module, pair: ShrinkPair, kept: np.ndarray) -> None:
    """Keep only input channels ``kept`` (sorted) of the consumers and the matching producer
    outputs and norm channels, in place. The consumers' kernels must already be solved."""
    kept = np.asarray(kept)
    width = get_layer(model, pair.consumer).in_features
    for name in pair.consumers:
        consumer = get_layer(model, name)
        if consumer.in_features != width:
            raise ValueError(f"{name!r} reads {consumer.in_features} channels, {pair.consumer!r} "
                             f"{width}: they cannot share one cut")
        k = consumer.kernel.get_value()
        _set(consumer.kernel, k[kept] if k.ndim == 2 else k[:, :, kept, :])
        consumer.in_features = len(kept)
        if isinstance(consumer, nnx.Conv):
            consumer.kernel_shape = tuple(consumer.kernel.get_value().shape)
    for name in pair.producers:
        layer = get_layer(model, name)
        idx = producer_index(kept, width, pair.repeat)
        k = layer.kernel.get_value()
        _set(layer.kernel, k[..., idx])
        if getattr(layer, "bias", None) is not None and layer.use_bias:
            _set(layer.bias, layer.bias.get_value()[idx])
        layer.out_features = len(idx)
        if isinstance(layer, nnx.Conv):
            layer.kernel_shape = tuple(layer.kernel.get_value().shape)
    for name in pair.norms:
        norm = get_layer(model, name)
        if not isinstance(norm, nnx.BatchNorm):
            raise ValueError(f"{name!r} is a {type(norm).__name__}; only per-channel BatchNorm can "
                             "sit between a shrunk producer and consumer")
        for field in ("scale", "bias", "mean", "var"):
            var = getattr(norm, field, None)
            if var is not None:
                _set(var, var.get_value()[kept])
        norm.num_features = len(kept)


def _sibling(name: str, leaf: str) -> str:
    return ".".join([*name.split(".")[:-1], leaf])


def batchnorm_after(model: nnx.Module) -> dict[str, str]:
    """Conv name -> the per-channel BatchNorm that takes its output, by the timm/torchvision
    naming the zoo follows: ``convN→bnN`` siblings and sequential ``i→i+1`` (``downsample.0→
    downsample.1``). ResNet's convs all have one; ViT and ConvNeXt (LayerNorm) have none."""
    modules = dict(named_layers(model, (nnx.Module,)))
    found = {}
    for name, layer in modules.items():
        if not isinstance(layer, nnx.Conv):
            continue
        leaf = name.split(".")[-1]
        after = (_sibling(name, f"bn{leaf[4:]}") if leaf.startswith("conv") else
                 _sibling(name, str(int(leaf) + 1)) if leaf.isdigit() else None)
        if after is not None and isinstance(modules.get(after), nnx.BatchNorm):
            found[name] = after
    return found


def residual_streams(model: nnx.Module) -> list[ShrinkPair]:
    """The model's residual-stream cuts (``ResNet.residual_streams``); none for other models."""
    fn = getattr(model, "residual_streams", None)
    return list(fn()) if fn is not None else []


def infer_pairs(model: nnx.Module) -> list[ShrinkPair]:
    """Pairs by the timm/torchvision naming the zoo follows: ``fc1→fc2``, ``qkv→proj`` (heads of
    the parent's ``head_dim``), ``q/k/v→proj``, ``conv1→bn1→conv2`` and ``conv2→bn2→conv3``
    (the residual streams' cuts: ``residual_streams``; both: ``cuts_by_consumer``)."""
    layers = named_layers(model)
    norms = batchnorm_after(model)
    pairs = []
    for name, layer in layers.items():
        leaf = name.split(".")[-1]
        parent = get_layer(model, ".".join(name.split(".")[:-1])) if "." in name else model
        if leaf == "fc2" and _sibling(name, "fc1") in layers:
            pairs.append(ShrinkPair(name, (_sibling(name, "fc1"),)))
        elif leaf == "proj" and hasattr(parent, "head_dim"):
            if _sibling(name, "qkv") in layers:
                pairs.append(ShrinkPair(name, (_sibling(name, "qkv"),), group_size=parent.head_dim,
                                        repeat=3))
            elif all(_sibling(name, s) in layers for s in "qkv"):
                pairs.append(ShrinkPair(name, tuple(_sibling(name, s) for s in "qkv"),
                                        group_size=parent.head_dim))
        elif leaf in ("conv2", "conv3") and isinstance(layer, nnx.Conv):
            i = int(leaf[-1])
            prev = _sibling(name, f"conv{i - 1}")
            if prev in layers and getattr(layers[prev], "feature_group_count", 1) == 1 and \
                    layer.feature_group_count == 1:
                pairs.append(ShrinkPair(name, (prev,), (norms[prev],) if prev in norms else ()))
    return pairs


def cuts_by_consumer(model: nnx.Module, pairs: Sequence[ShrinkPair] | None = None
                     ) -> dict[str, ShrinkPair]:
    """Every cut a structured prune of ``model`` can make, by (first) consumer: ``pairs``
    (default ``infer_pairs``) and the residual streams; what replaying recorded cuts looks up."""
    return {p.consumer: p for p in [*(pairs or infer_pairs(model)), *residual_streams(model)]}


def kept_channels(cuts: dict[str, ShrinkPair], kept: dict[str, np.ndarray]
                  ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per layer, the original channels a structured prune kept: (input channels of every
    consumer, output channels of every producer), from ``kept`` (first consumer -> kept input
    channels, ``PruneResult.kept``) and ``cuts`` (``cuts_by_consumer``). A layer may be both
    (ResNet-50's conv2; a block's conv1 under a stream cut). Fused producers (``repeat`` > 1,
    a ViT's qkv) are left out: their outputs are ``producer_index`` of the consumer's width."""
    kept_in, kept_out = {}, {}
    for name, channels in kept.items():
        pair = cuts[name]
        channels = np.asarray(channels)
        for consumer in pair.consumers:
            kept_in[consumer] = channels
        if pair.repeat == 1:
            kept_out.update({producer: channels for producer in pair.producers})
    return kept_in, kept_out
