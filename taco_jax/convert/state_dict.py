"""Load a PyTorch state dict from disk as ``{name: np.ndarray}``.

``.safetensors`` and ``.npz`` (Google's JAX ViT releases) are read without torch;
``.pth``/``.pt``/``.bin`` need torch (loaded with
``weights_only=True``, never executing pickled code). Wrappers used by training scripts
(``state_dict``, ``model``, ``state_dict_ema``, ``model_ema``, a ``module.`` prefix) are
removed; a training checkpoint holding both weights gives its EMA ones unless ``ema=False``, and
the log says which was read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from absl import logging

from taco_jax.convert.safetensors_io import read_safetensors

SAFETENSORS_SUFFIXES = (".safetensors",)
NUMPY_SUFFIXES = (".npz",)
TORCH_SUFFIXES = (".pth", ".pt", ".bin")
SUFFIXES = SAFETENSORS_SUFFIXES + NUMPY_SUFFIXES + TORCH_SUFFIXES
EMA_WRAPPERS = ("state_dict_ema", "model_ema")
RAW_WRAPPERS = ("state_dict", "model")


def load_state_dict(path: str | Path, *, ema: bool = True) -> dict[str, np.ndarray]:
    """Read a checkpoint file into float/int NumPy arrays keyed by PyTorch parameter name;
    ``ema``: from a training checkpoint with both, the EMA weights (else the raw ones)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist or is not a file")
    if path.suffix in SAFETENSORS_SUFFIXES:
        sd = read_safetensors(path)
    elif path.suffix in NUMPY_SUFFIXES:
        with np.load(path, allow_pickle=False) as npz:
            sd = {k: npz[k] for k in npz.files}
    elif path.suffix in TORCH_SUFFIXES:
        sd = _read_torch(path, ema)
    else:
        raise ValueError(f"checkpoint {str(path)!r}: unknown suffix {path.suffix!r}; expected "
                         f"one of {', '.join(SUFFIXES)}")
    return strip_prefix(sd, "module.")


def _read_torch(path: Path, ema: bool) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise ImportError(f"reading {path.name} needs torch (pip install torch); "
                          ".safetensors files are read without it") from None
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict):
        present = [k for k in (*EMA_WRAPPERS, *RAW_WRAPPERS) if isinstance(obj.get(k), dict)]
        order = (*EMA_WRAPPERS, *RAW_WRAPPERS) if ema else (*RAW_WRAPPERS, *EMA_WRAPPERS)
        chosen = next((k for k in order if k in present), None)
        if chosen is not None:
            logging.info("%s: read the %r weights%s", path.name, chosen,
                         f" (it also holds {[k for k in present if k != chosen]})"
                         if len(present) > 1 else "")
            obj = obj[chosen]
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a state dict, found a {type(obj).__name__}")
    # bfloat16 has no NumPy twin in torch's .numpy(): go through float32.
    return {k: (v.float() if v.dtype == torch.bfloat16 else v).numpy()
            for k, v in obj.items() if isinstance(v, torch.Tensor)}


def strip_prefix(sd: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """Drop ``prefix`` from every key when all keys carry it (e.g. DataParallel's ``module.``)."""
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix):]: v for k, v in sd.items()}
    return sd
