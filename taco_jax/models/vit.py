"""Vision Transformer and DeiT in timm's layout (``blocks.3.attn.qkv``, ``blocks.3.mlp.fc1``, ...).

One class covers timm's ``VisionTransformer`` (ViT incl. augreg weights, DeiT) and
``VisionTransformerDistilled`` (DeiT with a distillation token and a second head ``head_dist``).

Compression hooks:
- the number of attention heads is read from the width of the ``qkv`` output and the stored
  ``head_dim``, so head pruning may shrink ``qkv`` (output) and ``proj`` (input) by whole heads;
- the MLP width is whatever ``fc1``/``fc2`` hold;
- ``Block.remove("attn")`` removes a block's attention branch (DC-ViT) together with its norm,
  layer scale and drop path, ``Block.remove("mlp")`` the MLP branch; ``removed_branches`` /
  ``remove_branches`` name and replay them (a checkpoint records them).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from taco_jax.models.layers import (
    TRUNC_NORMAL,
    LayerScale,
    Mlp,
    drop_path,
    layer_norm,
    linear,
    residual_branch,
)
from taco_jax.models.matmul_conv import conv_general_dilated
from taco_jax.models.preprocess import PRESETS, Preprocess
from taco_jax.models.registry import register


class PatchEmbed(nnx.Module):
    """Non-overlapping p×p patches → tokens. (B, H, W, C) → (B, (H/p)·(W/p), D), row-major."""

    def __init__(self, in_chans: int, dim: int, patch_size: int, *, rngs: nnx.Rngs):
        self.proj = nnx.Conv(in_chans, dim, (patch_size, patch_size), strides=patch_size,
                             padding="VALID", conv_general_dilated=conv_general_dilated, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.proj(x)
        return x.reshape(x.shape[0], -1, x.shape[-1])


class Attention(nnx.Module):
    """Multi-head self-attention with a fused ``qkv`` projection. (B, N, D) → (B, N, D).

    ``qkv`` outputs ``[q | k | v]``, each ``num_heads × head_dim`` (head-major), as in timm.
    """

    def __init__(self, dim: int, num_heads: int, *, head_dim: int | None = None,
                 qkv_bias: bool = True, rngs: nnx.Rngs):
        self.head_dim = head_dim or dim // num_heads
        inner = num_heads * self.head_dim
        self.qkv = linear(dim, 3 * inner, use_bias=qkv_bias, rngs=rngs)
        self.proj = linear(inner, dim, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, n, _ = x.shape
        qkv = self.qkv(x)
        heads = qkv.shape[-1] // (3 * self.head_dim)
        q, k, v = qkv.reshape(b, n, 3, heads, self.head_dim).transpose(2, 0, 3, 1, 4)
        logits = jnp.einsum("bhqd,bhkd->bhqk", q * self.head_dim**-0.5, k)
        out = jnp.einsum("bhqk,bhkd->bqhd", jax.nn.softmax(logits, axis=-1), v)
        return self.proj(out.reshape(b, n, heads * self.head_dim))


class Block(nnx.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``.
    Either branch is skipped when its module (``attn`` / ``mlp``) is ``None``."""

    def __init__(self, dim: int, num_heads: int, *, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, eps: float = 1e-6, init_values: float | None = None,
                 drop_path_rate: float = 0.0, rngs: nnx.Rngs):
        self.norm1 = layer_norm(dim, eps, rngs=rngs)
        self.attn: Attention | None = Attention(dim, num_heads, qkv_bias=qkv_bias, rngs=rngs)
        self.ls1 = LayerScale(dim, init_values) if init_values else None
        self.drop_path1 = drop_path(drop_path_rate, 3, rngs=rngs)
        self.norm2 = layer_norm(dim, eps, rngs=rngs)
        self.mlp: Mlp | None = Mlp(dim, int(dim * mlp_ratio), rngs=rngs)
        self.ls2 = LayerScale(dim, init_values) if init_values else None
        self.drop_path2 = drop_path(drop_path_rate, 3, rngs=rngs)

    def attn_half(self, x: jax.Array) -> jax.Array:
        """``x + attn(norm1(x))`` (x itself without an attention branch). (B, N, D)."""
        if self.attn is None:
            return x
        return x + residual_branch(self.attn(self.norm1(x)), self.ls1, self.drop_path1)

    def mlp_half(self, x: jax.Array) -> jax.Array:
        """``x + mlp(norm2(x))`` (x itself without an MLP branch). (B, N, D)."""
        if self.mlp is None:
            return x
        return x + residual_branch(self.mlp(self.norm2(x)), self.ls2, self.drop_path2)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.mlp_half(self.attn_half(x))

    def remove(self, branch: str) -> None:
        """Drop the ``branch`` ("attn" or "mlp") with its norm, layer scale and drop path: the
        block then passes its input through that half unchanged."""
        if branch not in BRANCHES:
            raise ValueError(f"a block's branches are {BRANCHES}, got {branch!r}")
        i = BRANCHES.index(branch) + 1
        setattr(self, branch, None)
        for name in (f"norm{i}", f"ls{i}", f"drop_path{i}"):
            setattr(self, name, None)


BRANCHES = ("attn", "mlp")


def removed_branches(model: nnx.Module) -> list[str]:
    """The residual branches removed from a ViT's blocks ("blocks.3.attn", ...), in order; []
    for any other model."""
    if not isinstance(model, VisionTransformer):
        return []
    return [f"blocks.{i}.{b}" for i, block in enumerate(model.blocks) for b in BRANCHES
            if getattr(block, b) is None]


def remove_branches(model: nnx.Module, names: list[str]) -> nnx.Module:
    """Remove the named branches ("blocks.<i>.attn" / "blocks.<i>.mlp") from a ViT in place;
    ValueError naming one that is not a branch of ``model``."""
    for name in names:
        parts = name.split(".")
        ok = (isinstance(model, VisionTransformer) and len(parts) == 3 and parts[0] == "blocks"
              and parts[1].isdigit() and int(parts[1]) < len(model.blocks)
              and parts[2] in BRANCHES)
        if not ok:
            raise ValueError(f"{name!r} is not a removable branch of this "
                             f"{type(model).__name__} (blocks.<i>.attn or blocks.<i>.mlp)")
        model.blocks[int(parts[1])].remove(parts[2])
    return model


class VisionTransformer(nnx.Module):
    """ViT / DeiT with a class token (and, if ``distilled``, a distillation token).

    Input (B, img_size, img_size, in_chans) normalized float32 → logits (B, num_classes).
    Distilled models return the mean of ``head`` (class token) and ``head_dist`` (distillation
    token) logits, as timm does at eval.
    """

    head_name = "head"

    stem_name = "patch_embed.proj"  # its input layer: "stem" in a PruneConfig's overrides

    def __init__(self, *, num_classes: int, img_size: int = 224, patch_size: int = 16,
                 in_chans: int = 3, embed_dim: int = 768, depth: int = 12, num_heads: int = 12,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, distilled: bool = False,
                 norm_eps: float = 1e-6, init_values: float | None = None,
                 drop_path_rate: float = 0.0, preprocess: Preprocess, rngs: nnx.Rngs):
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        self.preprocess = preprocess
        self.num_features = embed_dim
        self.num_prefix_tokens = 2 if distilled else 1
        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_size, rngs=rngs)
        num_tokens = self.num_prefix_tokens + (img_size // patch_size) ** 2
        self.cls_token = nnx.Param(jnp.zeros((1, 1, embed_dim)))
        self.dist_token = (nnx.Param(TRUNC_NORMAL(rngs.params(), (1, 1, embed_dim)))
                           if distilled else None)
        self.pos_embed = nnx.Param(TRUNC_NORMAL(rngs.params(), (1, num_tokens, embed_dim)))
        rates = np.linspace(0.0, drop_path_rate, depth)
        self.blocks = nnx.List([
            Block(embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, eps=norm_eps,
                  init_values=init_values, drop_path_rate=float(r), rngs=rngs) for r in rates])
        self.norm = layer_norm(embed_dim, norm_eps, rngs=rngs)
        self.head = linear(embed_dim, num_classes, rngs=rngs)
        self.head_dist = linear(embed_dim, num_classes, rngs=rngs) if distilled else None

    def embed(self, x: jax.Array) -> jax.Array:
        """(B, H, W, C) → the first block's input tokens (B, prefix + N, D), position-embedded."""
        x = self.patch_embed(x)
        b = x.shape[0]
        prefix = [self.cls_token.value]
        if self.dist_token is not None:
            prefix.append(self.dist_token.value)
        x = jnp.concatenate([jnp.broadcast_to(t, (b, 1, t.shape[-1])) for t in prefix] + [x], 1)
        if x.shape[1] != self.pos_embed.value.shape[1]:
            raise ValueError(f"input gives {x.shape[1]} tokens but pos_embed has "
                             f"{self.pos_embed.value.shape[1]}: feed {self.preprocess.input_size}"
                             "² images or resize the position embedding")
        return x + self.pos_embed.value

    def head_logits(self, t: jax.Array) -> jax.Array:
        """Final-normed tokens (B, T, D) → logits (B, num_classes)."""
        if self.head_dist is None:
            return self.head(t[:, 0])
        return (self.head(t[:, 0]) + self.head_dist(t[:, 1])) / 2

    def segments(self) -> list:
        """The forward pass as a chain: embed, each block's attention half then MLP half, then
        final norm + head(s).

        Composing them is ``__call__``; sequential pruning caches each segment's inputs so its
        calibration runs every image through each half block once (cost linear in depth). Half
        blocks, not blocks: ``fc1``/``fc2`` then start from the cached residual stream instead of
        recomputing the attention (ViT-S/16: 2.4 → 1.6 block forwards per block).
        """
        halves = [h for b in self.blocks for h in (b.attn_half, b.mlp_half)]
        return [self.embed, *halves, lambda x: self.head_logits(self.norm(x))]

    def forward_tokens(self, x: jax.Array) -> jax.Array:
        """(B, H, W, C) → final-normed tokens (B, prefix + N, D); prefix = [cls(, dist)]."""
        for segment in self.segments()[:-1]:
            x = segment(x)
        return self.norm(x)

    def forward_features(self, x: jax.Array) -> jax.Array:
        """(B, H, W, C) → class-token embedding (B, D), the input of ``head``."""
        return self.forward_tokens(x)[:, 0]

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.head_logits(self.forward_tokens(x))


_SIZES = {"tiny": (192, 12, 3), "small": (384, 12, 6), "base": (768, 12, 12),
          "large": (1024, 24, 16)}


def _variant(size: str, *, distilled: bool, preset: str):
    dim, depth, heads = _SIZES[size]

    def make(*, num_classes: int, rngs: nnx.Rngs, img_size: int = 224, in_chans: int = 3,
             preprocess: Preprocess = PRESETS[preset], **overrides) -> VisionTransformer:
        kw = {"embed_dim": dim, "depth": depth, "num_heads": heads, **overrides}
        return VisionTransformer(
            num_classes=num_classes, img_size=img_size, in_chans=in_chans, distilled=distilled,
            preprocess=preprocess.at_size(img_size), rngs=rngs, **kw)
    return make


for _size in ("tiny", "small", "base", "large"):
    register(f"vit_{_size}_patch16_224")(_variant(_size, distilled=False, preset="augreg"))
for _size in ("tiny", "small", "base"):
    register(f"deit_{_size}_patch16_224")(_variant(_size, distilled=False, preset="deit"))
    register(f"deit_{_size}_distilled_patch16_224")(_variant(_size, distilled=True, preset="deit"))


@register("vit_mini")
def vit_mini(*, num_classes: int, rngs: nnx.Rngs, img_size: int = 28, in_chans: int = 1,
             patch_size: int = 4, embed_dim: int = 96, depth: int = 4, num_heads: int = 3,
             **overrides) -> VisionTransformer:
    """ViT for 28×28 grayscale: 4×4 patches → 7×7 tokens + class token, 96 wide, 4 deep."""
    c = (0.5,) * in_chans
    return VisionTransformer(
        num_classes=num_classes, img_size=img_size, patch_size=patch_size, in_chans=in_chans,
        embed_dim=embed_dim, depth=depth, num_heads=num_heads,
        preprocess=Preprocess(img_size, img_size, "bilinear", c, c), rngs=rngs, **overrides)
