"""The converter's own check: the converted model's logits against timm's PyTorch model holding
the same state dict, on a random batch. Optional: needs torch and timm, and timm names."""

from __future__ import annotations

import numpy as np
from absl import logging
from flax import nnx

from taco_jax.models.vit import VisionTransformer


def timm_max_logit_diff(sd: dict[str, np.ndarray], arch: str, model: nnx.Module, *,
                        batch: int = 2, seed: int = 0) -> float | None:
    """Max |logit difference| between ``model`` and timm's ``arch`` loaded with ``sd`` (strict),
    on ``batch`` random (S, S, C) inputs in eval mode; None (logged) when torch or timm is
    missing, timm has no ``arch``, or ``sd`` is not in timm's names."""
    try:
        import timm
        import torch
    except Exception as e:  # timm's import fails in several ways without torchvision
        logging.info("parity not checked: torch/timm unavailable (%s)", e)
        return None
    if arch not in timm.list_models():
        logging.info("parity not checked: timm has no model %r", arch)
        return None
    size, channels = model.preprocess.input_size, len(model.preprocess.mean)
    head = getattr(model, model.head_name)
    kw = {"img_size": size} if isinstance(model, VisionTransformer) else {}
    ref = timm.create_model(arch, pretrained=False, num_classes=head.kernel.value.shape[1],
                            in_chans=channels, **kw)
    try:
        ref.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v))
                             for k, v in sd.items()}, strict=True)
    except RuntimeError as e:
        logging.info("parity not checked: the state dict is not in timm's names (%s)",
                     str(e).splitlines()[0])
        return None
    x = np.random.default_rng(seed).standard_normal((batch, size, size, channels), np.float32)
    with torch.no_grad():
        expected = ref.eval()(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    got = np.asarray(model(x))
    return float(np.max(np.abs(got - expected)))
