"""torchvision ``VisionTransformer`` and ``ConvNeXt`` parameter names → timm names, and the eval
transforms torchvision publishes with those weights. (torchvision ResNet names are timm's.)

ViT (``vit_b_16``, ``vit_l_16``; LayerNorm eps 1e-6 as timm)::

    conv_proj, class_token, encoder.pos_embedding  → patch_embed.proj, cls_token, pos_embed
    encoder.layers.encoder_layer_{i}.ln_1 / ln_2   → blocks.{i}.norm1 / norm2
      .self_attention.in_proj_{weight,bias} (3D, D), rows [q; k; v] → blocks.{i}.attn.qkv
      .self_attention.out_proj                     → blocks.{i}.attn.proj
      .mlp.0 / mlp.3 (older: mlp.linear_1 / _2)    → blocks.{i}.mlp.fc1 / fc2
    encoder.ln, heads.head                         → norm, head

ConvNeXt (``features`` interleaves stages and the downsample layers between them)::

    features.0.{0,1} (conv, LayerNorm2d)            → stem.{0,1}
    features.{2s+1}.{j}.block.{0,2,3,5}             → stages.{s}.blocks.{j}.X,
        X = conv_dw, norm, mlp.fc1, mlp.fc2
    features.{2s+1}.{j}.layer_scale (C, 1, 1)       → stages.{s}.blocks.{j}.gamma (C,)
    features.{2s}.{0,1} (LayerNorm2d, conv), s >= 1 → stages.{s}.downsample.{0,1}
    classifier.0 / classifier.2                     → head.norm / head.fc
"""

from __future__ import annotations

import re

import numpy as np

from taco_jax.models.preprocess import PRESETS, Preprocess

_VIT_BLOCK = r"^encoder\.layers\.encoder_layer_(\d+)\."

_VIT = [
    (r"^conv_proj\.", "patch_embed.proj."),
    (r"^class_token$", "cls_token"),
    (r"^encoder\.pos_embedding$", "pos_embed"),
    (_VIT_BLOCK + r"ln_1\.", r"blocks.\1.norm1."),
    (_VIT_BLOCK + r"ln_2\.", r"blocks.\1.norm2."),
    (_VIT_BLOCK + r"self_attention\.in_proj_(weight|bias)$", r"blocks.\1.attn.qkv.\2"),
    (_VIT_BLOCK + r"self_attention\.out_proj\.", r"blocks.\1.attn.proj."),
    (_VIT_BLOCK + r"mlp\.(?:0|linear_1)\.", r"blocks.\1.mlp.fc1."),
    (_VIT_BLOCK + r"mlp\.(?:3|linear_2)\.", r"blocks.\1.mlp.fc2."),
    (r"^encoder\.ln\.", "norm."),
    (r"^heads\.head\.", "head."),
]

_CONVNEXT_BLOCK = {"block.0.": "conv_dw.", "block.2.": "norm.", "block.3.": "mlp.fc1.",
                   "block.5.": "mlp.fc2.", "layer_scale": "gamma"}


def _convnext_block(m: re.Match) -> str:
    return f"stages.{int(m.group(1)) // 2}.blocks.{m.group(2)}.{_CONVNEXT_BLOCK[m.group(3)]}"


_CONVNEXT = [
    (r"^features\.0\.([01])\.", r"stem.\1."),
    (r"^features\.(\d*[13579])\.(\d+)\.(block\.[0235]\.|layer_scale$)", _convnext_block),
    (r"^features\.(\d*[02468])\.([01])\.",
     lambda m: f"stages.{int(m.group(1)) // 2}.downsample.{m.group(2)}."),
    (r"^classifier\.0\.", "head.norm."),
    (r"^classifier\.2\.", "head.fc."),
]

# torchvision's eval transform (``ImageClassification``: resize the shorter side, center crop,
# bilinear, ImageNet mean/std) for its IMAGENET1K_V1 weights of each of our archs.
_RECIPES = {
    "vit_base_patch16_224": ("vit_b_16", Preprocess(224, 256, "bilinear")),
    "vit_large_patch16_224": ("vit_l_16", Preprocess(224, 242, "bilinear")),
    "convnext_tiny": ("convnext_tiny", Preprocess(224, 236, "bilinear")),
    "convnext_small": ("convnext_small", Preprocess(224, 230, "bilinear")),
    "convnext_base": ("convnext_base", Preprocess(224, 232, "bilinear")),
}


def _is_vit(keys) -> bool:
    return any(k.startswith("encoder.layers.encoder_layer_") for k in keys)


def is_torchvision(keys) -> bool:
    """A torchvision ViT (``encoder.layers.encoder_layer_*``) or ConvNeXt (``features.*``
    blocks with a ``layer_scale``); torchvision ResNets use timm's names and are not this."""
    return _is_vit(keys) or any(re.match(r"features\.\d+\.\d+\.layer_scale$", k) for k in keys)


def torchvision_to_timm(sd: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Rename a torchvision ViT / ConvNeXt state dict to timm names (``layer_scale`` (C, 1, 1)
    becomes ``gamma`` (C,)); returns it and each new name's source name. Names no rule knows
    are kept. Raises ValueError (one line) for a ViT with a ``heads.pre_logits`` layer."""
    if any(k.startswith("heads.pre_logits.") for k in sd):
        raise ValueError("heads.pre_logits: this torchvision ViT has a representation layer "
                         "(representation_size) between its final norm and head, which our "
                         "ViT has no place for")
    rules = _VIT if _is_vit(sd) else _CONVNEXT
    out, origin = {}, {}
    for key, value in sd.items():
        new = key
        for pattern, repl in rules:
            new, n = re.subn(pattern, repl, key)
            if n:
                break
        if key.endswith(".layer_scale") and np.ndim(value) == 3 and value.shape[1:] == (1, 1):
            value = np.reshape(value, value.shape[:1])
        out[new], origin[new] = value, key
    return out, origin


def torchvision_recipe(arch: str, input_size: int) -> tuple[Preprocess, str]:
    """The eval transform torchvision publishes for its weights of ``arch`` at ``input_size``,
    and which weights it is for. A ViT at another size than 224 is taken for SWAG end-to-end
    weights (resize straight to the crop, bicubic); archs without torchvision weights get
    ``ImageClassification``'s defaults (resize 256 → crop 224, bilinear) at their size."""
    if arch in _RECIPES and input_size == 224:
        name, recipe = _RECIPES[arch]
        return recipe, f"torchvision {name} IMAGENET1K_V1"
    if arch.startswith("vit_") and input_size != 224:
        return (Preprocess(input_size, input_size, "bicubic"),
                f"torchvision ViT IMAGENET1K_SWAG_E2E_V1 at {input_size}")
    return PRESETS["torchvision"].at_size(input_size), "torchvision ImageClassification defaults"
