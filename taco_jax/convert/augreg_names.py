"""Google's JAX ViT checkpoints (``.npz``: the original and AugReg ``vit_*`` releases, and
big_vision exports) → timm names in PyTorch layout, so they go through the same loader.

Layout (``Transformer/encoderblock_{i}/...``; big_vision numbers the sub-modules 0/0/1 where
the original release uses 1/3/2)::

    embedding/kernel (p, p, C, D)            → patch_embed.proj.weight (D, C, p, p)
    cls, Transformer/posembed_input/pos_embedding (or pos_embedding) → cls_token, pos_embed
    MultiHeadDotProductAttention_*/{query,key,value}/kernel (D, H, hd) → attn.qkv (3·H·hd, D)
    MultiHeadDotProductAttention_*/out/kernel (H, hd, D)              → attn.proj (D, H·hd)
    MlpBlock_*/Dense_{0,1}, LayerNorm_*, Transformer/encoder_norm, head → mlp.fc1/2, norms, head

Keys no rule knows (e.g. an old ``pre_logits`` layer) are kept and reported as unexpected.
"""

from __future__ import annotations

import re

import numpy as np

_PREFIXES = ("opt/target/", "params/img/", "params/")


def is_augreg(keys) -> bool:
    return any(k.endswith("embedding/kernel") and "/" in k for k in keys)


def _strip(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    for prefix in _PREFIXES:
        if f"{prefix}embedding/kernel" in sd:
            return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in sd.items()}
    return sd


def augreg_to_timm(sd: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Rename and re-lay-out a JAX ViT ``.npz`` state dict; returns it and each key's origin."""
    sd = _strip(sd)
    big_vision = "pos_embedding" in sd
    mha, mlp, ln2 = (0, 0, 1) if big_vision else (1, 3, 2)
    out, origin = {}, {}

    def put(name: str, value: np.ndarray, *sources: str) -> None:
        out[name], origin[name] = value, " + ".join(sources)

    rest = dict(sd)
    take = rest.pop
    if "embedding/kernel" in rest:
        put("patch_embed.proj.weight", take("embedding/kernel").transpose(3, 2, 0, 1),
            "embedding/kernel")
    simple = {"embedding/bias": "patch_embed.proj.bias", "cls": "cls_token",
              "pos_embedding": "pos_embed",
              "Transformer/posembed_input/pos_embedding": "pos_embed",
              "Transformer/encoder_norm/scale": "norm.weight",
              "Transformer/encoder_norm/bias": "norm.bias", "head/bias": "head.bias"}
    for src, dst in simple.items():
        if src in rest:
            put(dst, take(src), src)
    if "head/kernel" in rest:
        put("head.weight", take("head/kernel").T, "head/kernel")
    blocks = sorted({int(m.group(1)) for k in rest
                     if (m := re.match(r"Transformer/encoderblock_(\d+)/", k))})
    for i in blocks:
        b, t = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
        att = f"{b}MultiHeadDotProductAttention_{mha}/"
        for j, ln in ((1, f"{b}LayerNorm_0/"), (2, f"{b}LayerNorm_{ln2}/")):
            for leaf, tleaf in (("scale", "weight"), ("bias", "bias")):
                if ln + leaf in rest:
                    put(f"{t}norm{j}.{tleaf}", take(ln + leaf), ln + leaf)
        qkv = [f"{att}{n}/kernel" for n in ("query", "key", "value")]
        if all(k in rest for k in qkv):
            parts = [take(k) for k in qkv]  # each (D, H, hd) → (H·hd, D)
            put(f"{t}attn.qkv.weight",
                np.concatenate([w.reshape(w.shape[0], -1).T for w in parts]), *qkv)
        qkv_b = [f"{att}{n}/bias" for n in ("query", "key", "value")]
        if all(k in rest for k in qkv_b):
            put(f"{t}attn.qkv.bias", np.concatenate([take(k).reshape(-1) for k in qkv_b]), *qkv_b)
        if f"{att}out/kernel" in rest:
            w = take(f"{att}out/kernel")
            put(f"{t}attn.proj.weight", w.reshape(-1, w.shape[-1]).T, f"{att}out/kernel")
        if f"{att}out/bias" in rest:
            put(f"{t}attn.proj.bias", take(f"{att}out/bias"), f"{att}out/bias")
        for r in range(2):
            dense = f"{b}MlpBlock_{mlp}/Dense_{r}/"
            if dense + "kernel" in rest:
                put(f"{t}mlp.fc{r + 1}.weight", take(dense + "kernel").T, dense + "kernel")
            if dense + "bias" in rest:
                put(f"{t}mlp.fc{r + 1}.bias", take(dense + "bias"), dense + "bias")
    for key, value in rest.items():
        put(key, value, key)
    return out, origin
