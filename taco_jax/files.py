"""Files that appear whole or not at all: the one temp-write-then-rename used by every writer.

A reader (a resumed run, a deployment script, a second process) never sees a half-written
report, model or export: the bytes go to a hidden sibling first, any check runs on that, and one
``os.replace`` puts it in place. Anything that goes wrong removes the sibling.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np


@contextlib.contextmanager
def replaced_atomically(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a hidden temporary sibling of ``path`` (same extension, so writers that infer a
    format from it still do) to write and check; on leaving the block without an error it
    replaces ``path`` in one rename, on any error (or interrupt) it is removed. The parent
    directory is created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # nothing left there after a successful replace


def write_npz(path: str | os.PathLike, arrays: dict, *, compressed: bool = True) -> None:
    """``arrays`` (name -> array-like) as an ``.npz`` at ``path``, atomically."""
    save = np.savez_compressed if compressed else np.savez
    with replaced_atomically(path) as tmp:
        save(tmp, **{k: np.asarray(v) for k, v in arrays.items()})


def write_json(path: str | os.PathLike, obj, indent: int | None = 2) -> None:
    """``obj`` as JSON at ``path``, atomically (floats for numpy scalars)."""
    with replaced_atomically(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent, default=float))
