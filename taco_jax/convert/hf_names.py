"""Hugging Face ``transformers`` parameter names → timm names, for ViT, DeiT, ConvNeXt, ResNet.

Both the names stored in Hub checkpoints (``vit.encoder.layer.0.attention.attention.query``) and
those of transformers 5 modules (``vit.layers.0.attention.q_proj``) are accepted. Separate
``q/k/v`` projections of equal shape are fused into timm's ``qkv`` (rows ``[q; k; v]``).
"""

from __future__ import annotations

import re

import numpy as np

HF_PREFIXES = ("vit.", "deit.", "convnext.", "resnet.")

# Hub-checkpoint names → transformers-5 names (applied first, in order).
_LEGACY = [
    (r"^(vit|deit)\.encoder\.layer\.(\d+)\.", r"\1.layers.\2."),
    (r"\.attention\.attention\.query\.", ".attention.q_proj."),
    (r"\.attention\.attention\.key\.", ".attention.k_proj."),
    (r"\.attention\.attention\.value\.", ".attention.v_proj."),
    (r"\.attention\.output\.dense\.", ".attention.o_proj."),
    (r"\.intermediate\.dense\.", ".mlp.fc1."),
    (r"\.output\.dense\.", ".mlp.fc2."),
]

_VIT = [
    (r"^(vit|deit)\.embeddings\.cls_token$", "cls_token"),
    (r"^(vit|deit)\.embeddings\.distillation_token$", "dist_token"),
    (r"^(vit|deit)\.embeddings\.position_embeddings$", "pos_embed"),
    (r"^(vit|deit)\.embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^(vit|deit)\.layers\.(\d+)\.attention\.o_proj\.", r"blocks.\2.attn.proj."),
    (r"^(vit|deit)\.layers\.(\d+)\.attention\.([qkv])_proj\.", r"blocks.\2.attn.\3."),
    (r"^(vit|deit)\.layers\.(\d+)\.layernorm_before\.", r"blocks.\2.norm1."),
    (r"^(vit|deit)\.layers\.(\d+)\.layernorm_after\.", r"blocks.\2.norm2."),
    (r"^(vit|deit)\.layers\.(\d+)\.mlp\.", r"blocks.\2.mlp."),
    (r"^(vit|deit)\.layernorm\.", "norm."),
    (r"^(cls_)?classifier\.", "head."),
    (r"^distillation_classifier\.", "head_dist."),
]

_CONVNEXT_BLOCK = {"dwconv.": "conv_dw.", "layernorm.": "norm.", "pwconv1.": "mlp.fc1.",
                   "pwconv2.": "mlp.fc2.", "layer_scale_parameter": "gamma"}

_CONVNEXT = [
    (r"^convnext\.embeddings\.patch_embeddings\.", "stem.0."),
    (r"^convnext\.embeddings\.layernorm\.", "stem.1."),
    (r"^convnext\.encoder\.stages\.(\d+)\.downsampling_layer\.(\d)\.", r"stages.\1.downsample.\2."),
    (r"^convnext\.encoder\.stages\.(\d+)\.layers\.(\d+)\."
     r"(dwconv\.|layernorm\.|pwconv1\.|pwconv2\.|layer_scale_parameter$)",
     lambda m: f"stages.{m.group(1)}.blocks.{m.group(2)}.{_CONVNEXT_BLOCK[m.group(3)]}"),
    (r"^convnext\.layernorm\.", "head.norm."),
    (r"^classifier\.", "head.fc."),
]


def _stage(m: re.Match) -> str:
    return f"layer{int(m.group(1)) + 1}.{m.group(2)}."


def _resnet_conv(m: re.Match) -> str:
    kind = "conv" if m.group(4) == "convolution" else "bn"
    return f"{_stage(m)}{kind}{int(m.group(3)) + 1}."


_RESNET = [
    (r"^resnet\.embedder\.embedder\.convolution\.", "conv1."),
    (r"^resnet\.embedder\.embedder\.normalization\.", "bn1."),
    (r"^resnet\.encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.convolution\.",
     lambda m: f"{_stage(m)}downsample.0."),
    (r"^resnet\.encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.normalization\.",
     lambda m: f"{_stage(m)}downsample.1."),
    (r"^resnet\.encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d)\.(convolution|normalization)\.",
     _resnet_conv),
    (r"^classifier\.1\.", "fc."),
]

_FAMILY_RULES = {"vit.": _VIT, "deit.": _VIT, "convnext.": _CONVNEXT, "resnet.": _RESNET}


def is_hf(keys) -> bool:
    return any(k.startswith(HF_PREFIXES) for k in keys)


def _rename(key: str, rules) -> str:
    for pattern, repl in rules:
        key, n = re.subn(pattern, repl, key)
        if n and rules is not _LEGACY:
            return key
    return key


def hf_to_timm(sd: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Rename a Hugging Face state dict to timm names. Returns it and, for each new name, the
    source name(s) it came from (for error messages). Names no rule knows are kept as they are."""
    backbone = next((p for p in HF_PREFIXES if any(k.startswith(p) for k in sd)), None)
    rules = _FAMILY_RULES.get(backbone, [])
    out, origin = {}, {}
    for key, value in sd.items():
        new = _rename(_rename(key, _LEGACY), rules)
        out[new], origin[new] = value, key
    for name in [k for k in out if re.search(r"\.attn\.q\.(weight|bias)$", k)]:
        parts = [name.replace(".attn.q.", f".attn.{x}.") for x in "qkv"]
        if all(p in out for p in parts) and len({out[p].shape for p in parts}) == 1:
            fused = name.replace(".attn.q.", ".attn.qkv.")
            out[fused] = np.concatenate([out.pop(p) for p in parts], axis=0)
            origin[fused] = " + ".join(origin.pop(p) for p in parts)
    return out, origin
