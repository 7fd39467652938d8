"""ConvNeXt in timm's layout (``stem.0``, ``stages.2.blocks.4.mlp.fc1``, ``head.fc``, ...).

A block is ``x + gamma * fc2(gelu(fc1(LN(dwconv7x7(x)))))`` in channels-last form; stage i > 0
starts with ``downsample = [LayerNorm, 2×2/2 conv]``. The MLP width is whatever ``fc1``/``fc2``
hold, so MLP neurons can be pruned; ``block.mlp = None`` removes the MLP branch (and its
``gamma``) leaving only the residual.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from taco_jax.models.layers import TRUNC_NORMAL, Mlp, drop_path, layer_norm
from taco_jax.models.matmul_conv import conv_general_dilated
from taco_jax.models.preprocess import PRESETS, Preprocess
from taco_jax.models.registry import register


def _conv(cin: int, cout: int, k: int, *, stride: int = 1, groups: int = 1,
          rngs: nnx.Rngs) -> nnx.Conv:
    p = (k - stride) // 2  # 3 for the 7×7 depthwise conv, 0 for the patchify / downsample convs
    return nnx.Conv(cin, cout, (k, k), strides=stride, padding=((p, p), (p, p)),
                    feature_group_count=groups, kernel_init=TRUNC_NORMAL,
                    conv_general_dilated=conv_general_dilated, rngs=rngs)


class Block(nnx.Module):
    """ConvNeXt block. (B, H, W, C) → (B, H, W, C)."""

    def __init__(self, dim: int, *, mlp_ratio: float = 4.0, ls_init_value: float = 1e-6,
                 drop_path_rate: float = 0.0, rngs: nnx.Rngs):
        self.conv_dw = _conv(dim, dim, 7, groups=dim, rngs=rngs)
        self.norm = layer_norm(dim, 1e-6, rngs=rngs)
        self.mlp: Mlp | None = Mlp(dim, int(mlp_ratio * dim), rngs=rngs)
        self.gamma = nnx.Param(jnp.full((dim,), ls_init_value, jnp.float32))
        self.drop_path = drop_path(drop_path_rate, 4, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.mlp is None:
            return x
        y = self.mlp(self.norm(self.conv_dw(x))) * self.gamma.value
        return x + (y if self.drop_path is None else self.drop_path(y))


class Stage(nnx.Module):
    """Optional ``downsample`` (LayerNorm + 2×2/2 conv) then ``blocks``."""

    def __init__(self, cin: int, cout: int, depth: int, *, downsample: bool,
                 drop_path_rates: Sequence[float], rngs: nnx.Rngs):
        self.downsample = (nnx.List([layer_norm(cin, 1e-6, rngs=rngs),
                                     _conv(cin, cout, 2, stride=2, rngs=rngs)])
                           if downsample else None)
        self.blocks = nnx.List([Block(cout, drop_path_rate=float(r), rngs=rngs)
                                for r in drop_path_rates[:depth]])

    def segments(self) -> list:
        """The downsample (if any), then each block."""
        d = self.downsample
        return ([] if d is None else [lambda x: d[1](d[0](x))]) + list(self.blocks)

    def __call__(self, x: jax.Array) -> jax.Array:
        for segment in self.segments():
            x = segment(x)
        return x


class NormHead(nnx.Module):
    """timm's ``NormMlpClassifierHead``: ``norm`` (LayerNorm after pooling) then ``fc``."""

    def __init__(self, dim: int, num_classes: int, *, eps: float = 1e-6, rngs: nnx.Rngs):
        self.norm = layer_norm(dim, eps, rngs=rngs)
        self.fc = nnx.Linear(dim, num_classes, kernel_init=TRUNC_NORMAL, rngs=rngs)


class ConvNeXt(nnx.Module):
    """ConvNeXt. (B, H, W, in_chans) normalized float32 → logits (B, num_classes)."""

    head_name = "head.fc"

    stem_name = "stem.0"  # its input layer: "stem" in a PruneConfig's overrides

    def __init__(self, *, num_classes: int, depths: Sequence[int], dims: Sequence[int],
                 in_chans: int = 3, drop_path_rate: float = 0.0, head_norm_eps: float = 1e-6,
                 preprocess: Preprocess, rngs: nnx.Rngs):
        """``head_norm_eps``: 1e-6 in timm, 1e-12 in Hugging Face checkpoints."""
        if len(depths) != len(dims):
            raise ValueError(f"depths {tuple(depths)} and dims {tuple(dims)} differ in length")
        self.preprocess = preprocess
        self.num_features = dims[-1]
        self.stem = nnx.List([_conv(in_chans, dims[0], 4, stride=4, rngs=rngs),
                              layer_norm(dims[0], 1e-6, rngs=rngs)])
        rates = np.split(np.linspace(0.0, drop_path_rate, sum(depths)), np.cumsum(depths)[:-1])
        self.stages = nnx.List([
            Stage(dims[max(i - 1, 0)], dims[i], depths[i], downsample=i > 0,
                  drop_path_rates=rates[i].tolist(), rngs=rngs) for i in range(len(depths))])
        self.head = NormHead(dims[-1], num_classes, eps=head_norm_eps, rngs=rngs)

    def segments(self) -> list:
        """The forward pass as a chain: stem, each stage's downsample and every block, then
        pool + norm + ``fc``. Composing them is ``__call__``; sequential pruning caches each
        segment's inputs so its calibration runs every image through each block once.
        """
        stem = [lambda x: self.stem[1](self.stem[0](x))]
        body = [seg for stage in self.stages for seg in stage.segments()]
        return [*stem, *body, lambda x: self.head.fc(self.head.norm(jnp.mean(x, axis=(1, 2))))]

    def forward_features(self, x: jax.Array) -> jax.Array:
        """(B, H, W, C) → pooled, normed pre-logits (B, dims[-1])."""
        for segment in self.segments()[:-1]:
            x = segment(x)
        return self.head.norm(jnp.mean(x, axis=(1, 2)))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.head.fc(self.forward_features(x))


_VARIANTS = {
    "convnext_tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
    "convnext_small": ((3, 3, 27, 3), (96, 192, 384, 768)),
    "convnext_base": ((3, 3, 27, 3), (128, 256, 512, 1024)),
}


def _variant(depths: Sequence[int], dims: Sequence[int]):
    def make(*, num_classes: int, rngs: nnx.Rngs, in_chans: int = 3, img_size: int = 224,
             preprocess: Preprocess = PRESETS["convnext"], **overrides) -> ConvNeXt:
        """``img_size`` only sets the eval crop: the net is fully convolutional."""
        kw = {"depths": depths, "dims": dims, **overrides}
        return ConvNeXt(num_classes=num_classes, in_chans=in_chans,
                        preprocess=preprocess.at_size(img_size), rngs=rngs, **kw)
    return make


for _name, (_depths, _dims) in _VARIANTS.items():
    register(_name)(_variant(_depths, _dims))
