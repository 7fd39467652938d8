"""ResNet in the torchvision / timm layout (``conv1``, ``layer2.0.conv2``, ``fc``, ...).

torchvision and timm ``resnet{18,34,50,101}`` share one state-dict layout (ResNet v1.5: the stride
of a bottleneck sits on its 3×3 conv); they differ only in eval preprocessing. ``resnet_mini`` is a
CIFAR-style variant for 28×28 grayscale images: 3×3 stem, no max-pool, three stages of basic blocks.

Every conv is a stock ``nnx.Conv`` followed by its ``nnx.BatchNorm``; nothing reads a channel count
at call time, so structured pruning may swap any conv/BN pair for a narrower one.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from taco_jax.models.matmul_conv import conv_general_dilated
from taco_jax.models.preprocess import PRESETS, Preprocess
from taco_jax.models.registry import register
from taco_jax.models.shrink import ShrinkPair

_KAIMING = jax.nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def conv2d(cin: int, cout: int, k: int, stride: int = 1, *, rngs: nnx.Rngs) -> nnx.Conv:
    """Bias-free k×k conv with PyTorch's symmetric padding ``k // 2`` (not Flax's 'SAME')."""
    p = k // 2
    return nnx.Conv(cin, cout, (k, k), strides=stride, padding=((p, p), (p, p)), use_bias=False,
                    kernel_init=_KAIMING, conv_general_dilated=conv_general_dilated, rngs=rngs)


def batch_norm(c: int, *, zero_init: bool = False, rngs: nnx.Rngs) -> nnx.BatchNorm:
    """PyTorch BatchNorm2d: eps 1e-5, running-average momentum 0.1 (Flax momentum 0.9)."""
    init = nnx.initializers.zeros if zero_init else nnx.initializers.ones
    return nnx.BatchNorm(c, momentum=0.9, epsilon=1e-5, use_fast_variance=False, scale_init=init,
                         rngs=rngs)


def _downsample(cin: int, cout: int, stride: int, rngs: nnx.Rngs) -> nnx.List | None:
    if stride == 1 and cin == cout:
        return None
    return nnx.List([conv2d(cin, cout, 1, stride, rngs=rngs), batch_norm(cout, rngs=rngs)])


def _shortcut(downsample: nnx.List | None, x: jax.Array) -> jax.Array:
    return x if downsample is None else downsample[1](downsample[0](x))


class BasicBlock(nnx.Module):
    """3×3 → 3×3 residual block (ResNet-18/34). (B, H, W, cin) → (B, H/s, W/s, planes)."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int, *, rngs: nnx.Rngs):
        self.conv1 = conv2d(cin, planes, 3, stride, rngs=rngs)
        self.bn1 = batch_norm(planes, rngs=rngs)
        self.conv2 = conv2d(planes, planes, 3, rngs=rngs)
        self.bn2 = batch_norm(planes, zero_init=True, rngs=rngs)
        self.downsample = _downsample(cin, planes, stride, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jax.nn.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return jax.nn.relu(y + _shortcut(self.downsample, x))


class Bottleneck(nnx.Module):
    """1×1 → 3×3 (stride) → 1×1 block (ResNet-50/101). (B, H, W, cin) → (B, H/s, W/s, 4·planes)."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, *, rngs: nnx.Rngs):
        cout = planes * self.expansion
        self.conv1 = conv2d(cin, planes, 1, rngs=rngs)
        self.bn1 = batch_norm(planes, rngs=rngs)
        self.conv2 = conv2d(planes, planes, 3, stride, rngs=rngs)
        self.bn2 = batch_norm(planes, rngs=rngs)
        self.conv3 = conv2d(planes, cout, 1, rngs=rngs)
        self.bn3 = batch_norm(cout, zero_init=True, rngs=rngs)
        self.downsample = _downsample(cin, cout, stride, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jax.nn.relu(self.bn1(self.conv1(x)))
        y = jax.nn.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return jax.nn.relu(y + _shortcut(self.downsample, x))


class ResNet(nnx.Module):
    """ResNet: stem, stages ``layer1..layerN`` (first at stride 1, the rest stride 2), global
    average pool, ``fc``. Input (B, H, W, in_chans) normalized float32 → logits (B, num_classes).

    ``stem="imagenet"``: 7×7/2 conv + 3×3/2 max-pool; ``stem="cifar"``: one 3×3/1 conv.
    """

    head_name = "fc"

    stem_name = "conv1"  # its input layer: "stem" in a PruneConfig's overrides

    def __init__(self, block: type[BasicBlock | Bottleneck], layers: Sequence[int], *,
                 num_classes: int, widths: Sequence[int] = (64, 128, 256, 512), in_chans: int = 3,
                 stem: str = "imagenet", preprocess: Preprocess, rngs: nnx.Rngs):
        if stem not in ("imagenet", "cifar"):
            raise ValueError(f"stem must be 'imagenet' or 'cifar', got {stem!r}")
        if len(layers) != len(widths):
            raise ValueError(f"layers {tuple(layers)} and widths {tuple(widths)} differ in length")
        self.preprocess = preprocess
        self.max_pool = stem == "imagenet"
        self.num_stages = len(layers)
        self.conv1 = (conv2d(in_chans, widths[0], 7, 2, rngs=rngs) if self.max_pool
                      else conv2d(in_chans, widths[0], 3, rngs=rngs))
        self.bn1 = batch_norm(widths[0], rngs=rngs)
        cin = widths[0]
        for i, (depth, planes) in enumerate(zip(layers, widths, strict=True)):
            blocks = []
            for j in range(depth):
                blocks.append(block(cin, planes, 2 if (i > 0 and j == 0) else 1, rngs=rngs))
                cin = planes * block.expansion
            setattr(self, f"layer{i + 1}", nnx.List(blocks))
        self.num_features = cin
        self.fc = nnx.Linear(cin, num_classes, rngs=rngs)

    def stem(self, x: jax.Array) -> jax.Array:
        """(B, H, W, C) → the input of ``layer1`` (conv, BN, ReLU, optional max-pool)."""
        x = jax.nn.relu(self.bn1(self.conv1(x)))
        if self.max_pool:
            # PyTorch's 3×3/2 pool with padding 1, as a -inf pad then a 'VALID' pool: the same
            # values bit for bit, and a form ONNX exporters translate (jax2onnx 0.17 reads an
            # explicit padding pair of nnx.max_pool as 'VALID': logits ~10% off, no error).
            x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
            x = nnx.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding="VALID")
        return x

    def segments(self) -> list:
        """The forward pass as a chain: stem, every residual block, then pool + ``fc``.

        Composing them is ``__call__``; sequential pruning caches each segment's inputs so its
        calibration runs every image through each block once (cost linear in depth).
        """
        blocks = [b for i in range(self.num_stages) for b in getattr(self, f"layer{i + 1}")]
        return [self.stem, *blocks, lambda x: self.fc(jnp.mean(x, axis=(1, 2)))]

    def residual_streams(self) -> list[ShrinkPair]:
        """The residual stream's stretches between changes of width, each as one cut: written
        by the stem's conv (or a block's downsample) and every block's last conv, each through
        its BatchNorm, and read by every block's first conv and downsample, and at the end by
        ``fc``. The identity shortcuts carry the channels on, so one cut removes the same
        channels from all of them; ``consumer`` is the first reader."""
        last = "conv3" if isinstance(self.layer1[0], Bottleneck) else "conv2"
        streams, producers, norms, readers = [], ["conv1"], ["bn1"], []
        for i in range(self.num_stages):
            for j, block in enumerate(getattr(self, f"layer{i + 1}")):
                at = f"layer{i + 1}.{j}"
                readers.append(f"{at}.conv1")
                if block.downsample is not None:
                    streams.append((producers, norms, [*readers, f"{at}.downsample.0"]))
                    producers, norms, readers = [f"{at}.downsample.0"], [f"{at}.downsample.1"], []
                producers.append(f"{at}.{last}")
                norms.append(f"{at}.bn{last[-1]}")
        streams.append((producers, norms, [*readers, "fc"]))
        return [ShrinkPair(r[0], tuple(p), tuple(n), readers=tuple(r[1:]))
                for p, n, r in streams]

    def forward_features(self, x: jax.Array) -> jax.Array:
        """(B, H, W, C) → pooled pre-logits (B, num_features)."""
        for segment in self.segments()[:-1]:
            x = segment(x)
        return jnp.mean(x, axis=(1, 2))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc(self.forward_features(x))


def _imagenet_resnet(block, layers):
    def make(*, num_classes: int, rngs: nnx.Rngs, in_chans: int = 3, img_size: int | None = None,
             preprocess: Preprocess = PRESETS["torchvision"],
             widths: Sequence[int] = (64, 128, 256, 512),
             layers: Sequence[int] = layers) -> ResNet:
        """``img_size`` (any size works: the net is fully convolutional) sets the eval crop;
        ``widths`` and ``layers`` (blocks per stage) other than the architecture's make a small
        copy of its structure (tests)."""
        if img_size is not None:
            preprocess = preprocess.at_size(img_size)
        return ResNet(block, layers, num_classes=num_classes, in_chans=in_chans, widths=widths,
                      preprocess=preprocess, rngs=rngs)
    return make


register("resnet18")(_imagenet_resnet(BasicBlock, (2, 2, 2, 2)))
register("resnet34")(_imagenet_resnet(BasicBlock, (3, 4, 6, 3)))
register("resnet50")(_imagenet_resnet(Bottleneck, (3, 4, 6, 3)))
register("resnet101")(_imagenet_resnet(Bottleneck, (3, 4, 23, 3)))


@register("resnet_mini")
def resnet_mini(*, num_classes: int, rngs: nnx.Rngs, in_chans: int = 1, img_size: int = 28,
                widths: Sequence[int] = (16, 32, 64), layers: Sequence[int] = (2, 2, 2)) -> ResNet:
    """CIFAR-style ResNet-14 (≈0.17M params): 3×3 stem, stages of 16/32/64 channels."""
    c = (0.5,) * in_chans
    return ResNet(BasicBlock, layers, num_classes=num_classes, widths=widths, in_chans=in_chans,
                  stem="cifar", preprocess=Preprocess(img_size, img_size, "bilinear", c, c),
                  rngs=rngs)
