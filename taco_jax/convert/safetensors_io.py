"""Read ``.safetensors`` files with NumPy alone (no torch, no safetensors package).

Format: an 8-byte little-endian header length, a JSON header mapping each tensor name to
``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets into the byte buffer after the
header), then the buffer.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import ml_dtypes
import numpy as np

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}


def read_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """All tensors of a safetensors file as NumPy arrays (copied out of the file)."""
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise ValueError(f"{path}: not a safetensors file (shorter than its 8-byte header)")
        (header_len,) = struct.unpack("<Q", raw)
        if header_len > size - 8:
            raise ValueError(f"{path}: not a safetensors file (header length {header_len} "
                             f"exceeds the file size {size})")
        header = json.loads(f.read(header_len))
    header.pop("__metadata__", None)
    buffer = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + header_len)
    out = {}
    for name, info in header.items():
        if info["dtype"] not in _DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has dtype {info['dtype']}; "
                             f"supported: {', '.join(_DTYPES)}")
        begin, end = info["data_offsets"]
        dtype = np.dtype(_DTYPES[info["dtype"]])
        shape = tuple(info["shape"])
        if end > buffer.size or end - begin != dtype.itemsize * int(np.prod(shape)):
            raise ValueError(f"{path}: tensor {name!r} has bad data offsets {begin}..{end} "
                             f"for {info['dtype']}{list(shape)}")
        out[name] = np.array(buffer[begin:end].view(dtype).reshape(shape))
    return out
