"""A model as one ``.safetensors`` file that rebuilds it: every parameter and BatchNorm statistic
under its dotted nnx path (``layer1.0.conv1.kernel``, ``layer1.0.bn1.mean``; JAX layouts: conv
kernels (kh, kw, C_in, C_out), Linear kernels (d_in, d_out)), and the architecture record (a
checkpoint's ``model.json``: arch, num_classes, overrides, preprocess, labels, source) as JSON
under the metadata key ``model.json``.

Written with NumPy alone (the ``safetensors`` package is a test dependency only); read back with
``convert.safetensors_io``. Format: 8-byte little-endian header length, the JSON header (padded
with spaces to a multiple of 8 bytes), then the tensors' bytes back to back.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, traverse_util

from taco_jax import files
from taco_jax.convert.checkpoint import build_abstract
from taco_jax.convert.convert import ModelSpec
from taco_jax.convert.safetensors_io import _DTYPES, read_safetensors
from taco_jax.models.preprocess import Preprocess

METADATA_KEY = "model.json"
_WEIGHTS = (nnx.Param, nnx.BatchStat)
_NAMES = {np.dtype(t): name for name, t in _DTYPES.items()}
_RECORD_KEYS = ("arch", "num_classes", "overrides", "preprocess")


def _flat_weights(model: nnx.Module) -> dict[str, jax.Array]:
    return {".".join(map(str, p)): v.get_value()
            for p, v in nnx.to_flat_state(nnx.state(model, _WEIGHTS))}


def _check_record(record: dict[str, Any], where: str) -> None:
    missing = [k for k in _RECORD_KEYS if k not in record]
    if missing:
        raise ValueError(f"{where} lacks {missing}; expected a model.json record with "
                         f"{list(_RECORD_KEYS)}")


def export_safetensors(model: nnx.Module, path: str | os.PathLike,
                       record: dict[str, Any]) -> dict[str, Any]:
    """Write the model's params and BatchNorm statistics to ``path`` (atomically: a temporary
    name beside it, renamed at the end), ``record`` (its ``model.json``) as the metadata.
    Returns {path, tensors, bytes}."""
    _check_record(record, "record")
    arrays = {name: np.asarray(a) for name, a in _flat_weights(model).items()}
    header: dict[str, Any] = {"__metadata__": {METADATA_KEY: json.dumps(record)}}
    offset = 0
    for name in sorted(arrays):
        a = arrays[name]
        if a.dtype not in _NAMES:
            raise ValueError(f"{name} has dtype {a.dtype}; supported: "
                             f"{', '.join(map(str, _NAMES))}")
        header[name] = {"dtype": _NAMES[a.dtype], "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    path = Path(path)
    with files.replaced_atomically(path) as tmp, tmp.open("wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for name in sorted(arrays):
            f.write(np.ascontiguousarray(arrays[name]).tobytes())
    return {"path": str(path), "tensors": len(arrays), "bytes": path.stat().st_size}


def read_record(path: str | os.PathLike) -> dict[str, Any]:
    """The ``model.json`` record stored in a file written by ``export_safetensors``."""
    path = Path(path)
    with path.open("rb") as f:
        raw = f.read(8)
        (n,) = struct.unpack("<Q", raw) if len(raw) == 8 else (0,)
        head = f.read(n)
    try:
        meta = json.loads(head).get("__metadata__") or {}
    except (json.JSONDecodeError, AttributeError):
        raise ValueError(f"{path}: not a safetensors file") from None
    if METADATA_KEY not in meta:
        raise ValueError(f"{path}: no {METADATA_KEY!r} in its metadata (not written by "
                         "export_safetensors)")
    record = json.loads(meta[METADATA_KEY])
    _check_record(record, f"{path}'s {METADATA_KEY}")
    return record


def load_safetensors(path: str | os.PathLike) -> tuple[nnx.Module, dict[str, Any]]:
    """The model saved by ``export_safetensors`` (structured cuts of the record replayed), in
    eval mode, and its record. ValueError
    naming every missing, unexpected or misshaped tensor."""
    record = read_record(path)
    model = build_abstract(ModelSpec(record["arch"], record["num_classes"], record["overrides"]),
                           record.get("cuts"))  # a structured specialist's cut shapes
    tensors = read_safetensors(path)
    want = {name: tuple(a.shape) for name, a in _flat_weights(model).items()}
    problems = [f"missing {n}" for n in sorted(want.keys() - tensors.keys())]
    problems += [f"unexpected {n}" for n in sorted(tensors.keys() - want.keys())]
    problems += [f"{n} has shape {tensors[n].shape}, the model {want[n]}"
                 for n in sorted(want.keys() & tensors.keys()) if tensors[n].shape != want[n]]
    if problems:
        raise ValueError(f"{path} does not fit {record['arch']} {record['overrides']}: "
                         + "; ".join(problems))
    state = nnx.state(model, _WEIGHTS)
    nnx.replace_by_pure_dict(state, traverse_util.unflatten_dict(
        {p: jnp.asarray(tensors[".".join(map(str, p))]) for p, _ in nnx.to_flat_state(state)}))
    nnx.update(model, state)
    model.preprocess = Preprocess.from_dict(record["preprocess"])
    model.eval()
    return model, record
