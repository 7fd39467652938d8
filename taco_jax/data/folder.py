"""A local image folder as a dataset, read with Pillow: no TensorFlow, nothing to prepare.

Two layouts under ``root`` (dataset name ``image_folder``, ``data_dir=root``):

* split folders, ``root/<split>/<class>/<image>`` (e.g. ``train`` and ``val`` or ``test``): every
  folder of ``root`` that holds class folders is a split; the classes are the union over splits.
* flat, ``root/<class>/<image>``: a seeded, stratified held-out split is made for you, ``train``
  and ``test`` (``HELD_OUT_FRACTION`` of each class's images, at least one when the class has two
  or more; the same files on every run, ``FolderDataset.manifest()`` lists them).

Images are the files with an image suffix (``IMAGE_SUFFIXES``, any case; hidden and other files are
ignored), in sorted path order, decoded to RGB uint8 (H, W, 3): grey, palette, alpha and CMYK modes
are converted, sizes may differ. A missing root, a root without class folders, a class folder
without images, or a file Pillow cannot decode is an error that names it; ``scan(root,
skip_bad=True)`` instead leaves out (and lists) empty files and files whose header Pillow cannot
read, checked once when the folder is scanned.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np
import PIL.Image
from absl import logging

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
HELD_OUT_FRACTION = 0.2
HELD_OUT_SEED = 0
SKIP_HINT = "config field task.skip_bad_files or pool.skip_bad_files"


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() in IMAGE_SUFFIXES)


def images_under(root: str | Path) -> list[Path]:
    """Every image file under ``root``, recursively, sorted (hidden files and folders and other
    suffixes skipped); ValueError naming ``root`` when it is not a folder or holds none."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ValueError(f"{str(root)!r} is not a folder")
    found = sorted(p for p in root.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(root).parts)
                   and p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise ValueError(f"{str(root)!r} holds no images (suffixes {sorted(IMAGE_SUFFIXES)})")
    return found


def _unreadable(path: Path) -> bool:
    """Whether Pillow cannot read the file's header (an empty, truncated-at-the-start or
    mislabelled file); cheap: no pixels are decoded."""
    if path.stat().st_size == 0:
        return True
    try:
        with PIL.Image.open(path) as im:
            im.verify()
    except (OSError, ValueError, SyntaxError, PIL.Image.DecompressionBombError):
        return True
    return False


def _class_images(folder: Path, hint: str = "", skipped: list[Path] | None = None
                  ) -> list[Path]:
    """The images of a class folder; ValueError naming it when it holds none, or naming its
    empty (0-byte) files, which no image is (an interrupted copy): found before any work.
    ``skipped`` (a list): leave out empty and unreadable files instead, appending them there."""
    found = _images_in(folder)
    if skipped is not None:
        bad = [_unreadable(p) for p in found]
        skipped += [p for p, b in zip(found, bad, strict=True) if b]
        found = [p for p, b in zip(found, bad, strict=True) if not b]
    if not found:
        raise ValueError(f"class folder {str(folder)!r} holds no "
                         f"{'readable ' if skipped is not None else ''}images (suffixes "
                         f"{sorted(IMAGE_SUFFIXES)}){hint}")
    empty = [p.name for p in found if p.stat().st_size == 0]
    if empty:
        raise ValueError(f"class folder {str(folder)!r} holds {len(empty)} empty (0-byte) image "
                         f"file(s): {', '.join(empty[:3])}{', ...' if len(empty) > 3 else ''}; "
                         f"remove or replace them, or skip them ({SKIP_HINT})")
    return found


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


@dataclasses.dataclass(frozen=True)
class FolderDataset:
    """The scanned folder: class names (sorted) and, per split, the image files and labels."""

    root: Path
    classes: tuple[str, ...]
    splits: dict[str, tuple[tuple[Path, ...], np.ndarray]]
    held_out_made: bool  # flat layout: the train/test split was made here
    skipped: tuple[Path, ...] = ()  # empty or unreadable files left out (``skip_bad``)

    def manifest(self) -> dict:
        """The files of every split (relative to the root) and how the split was made: what a
        run records so that its split can be checked or rebuilt."""
        return {"root": str(self.root), "classes": list(self.classes),
                "held_out": ({"fraction": HELD_OUT_FRACTION, "seed": HELD_OUT_SEED}
                             if self.held_out_made else None),
                "splits": {name: [str(p.relative_to(self.root)) for p in files]
                           for name, (files, _) in self.splits.items()},
                "skipped": [str(p.relative_to(self.root)) for p in self.skipped]}


def _held_out(files: list[list[Path]]) -> dict[str, tuple[tuple[Path, ...], np.ndarray]]:
    """Stratified train/test split of each class's files, seeded."""
    rng = np.random.default_rng(HELD_OUT_SEED)
    out: dict[str, tuple[list[Path], list[int]]] = {"train": ([], []), "test": ([], [])}
    for label, class_files in enumerate(files):
        n_test = max(1, round(HELD_OUT_FRACTION * len(class_files))) if len(class_files) > 1 else 0
        test = set(rng.permutation(len(class_files))[:n_test].tolist())
        for i, path in enumerate(class_files):
            paths, labels = out["test" if i in test else "train"]
            paths.append(path)
            labels.append(label)
    return {k: (tuple(p), np.asarray(lab, np.int64)) for k, (p, lab) in out.items()}


@functools.lru_cache(maxsize=16)
def scan(root: str, skip_bad: bool = False) -> FolderDataset:
    """Scan an image folder (either layout; see the module doc), read once per process.
    ``skip_bad``: leave out empty files and files whose header Pillow cannot read (each
    file's header is read once here), logged and listed in ``FolderDataset.skipped``; else
    an empty file is an error here, an undecodable one when it is read."""
    data = _scan(Path(root).expanduser(), root, [] if skip_bad else None)
    if data.skipped:
        shown = [str(p.relative_to(data.root)) for p in data.skipped[:5]]
        logging.warning("image folder %s: skipped %d empty or unreadable file(s): %s%s", root,
                        len(data.skipped), ", ".join(shown),
                        ", ..." if len(data.skipped) > 5 else "")
    return data


def _scan(path: Path, root: str, skipped: list[Path] | None) -> FolderDataset:
    """``scan``'s work; ``skipped``: a list collecting the files left out, or None."""
    if not path.is_dir():
        raise FileNotFoundError(f"image folder {root!r} does not exist or is not a directory")
    top = _class_dirs(path)
    if not top:
        raise ValueError(f"image folder {root!r} holds no class folders; expected "
                         "<root>/<class>/<image> or <root>/<split>/<class>/<image>")
    nested = {d.name: _class_dirs(d) for d in top if not _images_in(d) and _class_dirs(d)}
    if nested and len(nested) == len(top):  # split layout
        classes = sorted({c.name for dirs in nested.values() for c in dirs})
        splits = {}
        for split, dirs in nested.items():
            paths, labels = [], []
            for d in dirs:
                found = _class_images(d, skipped=skipped)
                paths += found
                labels += [classes.index(d.name)] * len(found)
            splits[split] = (tuple(paths), np.asarray(labels, np.int64))
        return FolderDataset(path, tuple(classes), splits, held_out_made=False,
                             skipped=tuple(skipped or ()))
    files = [_class_images(d, "; a folder of class folders must hold images, a folder of "
                              "split folders only class folders", skipped) for d in top]
    return FolderDataset(path, tuple(d.name for d in top), _held_out(files), held_out_made=True,
                         skipped=tuple(skipped or ()))


def decode(path: Path) -> np.ndarray:
    """One image file as RGB uint8 (H, W, 3); a file Pillow cannot read is named in the error."""
    try:
        with PIL.Image.open(path) as im:
            return np.asarray(im.convert("RGB"), np.uint8)
    except (OSError, ValueError, PIL.Image.DecompressionBombError) as e:
        raise ValueError(f"cannot read image {str(path)!r}: {e}; remove or replace it, or "
                         f"skip such files ({SKIP_HINT})") from None
