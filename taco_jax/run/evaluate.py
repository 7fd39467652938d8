"""A finished run's specialist, rebuilt from its workdir alone (what ``launch/evaluate.py``
calls): its top-1 on the run's test split (or another folder or split of the same classes),
and its predictions for a folder of new images."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import jax
import ml_collections
import numpy as np
from absl import logging

from taco_jax.data import folder, preprocess, source
from taco_jax.export import specialist
from taco_jax.files import replaced_atomically
from taco_jax.run import common
from taco_jax.train import fit


def _load(workdir: Path):
    path = Path(workdir) / specialist.DIRECTORY
    if not (path / "model.json").is_file():
        raise FileNotFoundError(f"{workdir} holds no {specialist.DIRECTORY}/ (written at the end "
                                "of a single-process TACO, DC-ViT or transfer run)")
    return specialist.load_specialist(path)


def evaluate_workdir(workdir: str | os.PathLike, *, data_dir: str | None = None,
                     split: str | None = None) -> dict:
    """Top-1/top-5 (%) of ``workdir``'s specialist on the run's task (``config.json``), test
    split ``split`` (default the run's) of ``data_dir`` (default the run's), every image through
    the specialist's stored eval recipe; with the run's own data it reproduces the report's
    ``compressed`` top-1 exactly. The task's classes must be the specialist's labels."""
    workdir = Path(workdir)
    model, meta = _load(workdir)
    task_config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text())
                                            ["task"])
    if data_dir is not None:
        task_config.data_dir = data_dir
    if split is not None:
        task_config.test_split = split
    task = common.parse_task(task_config)
    names = task.class_names()
    if names != meta["labels"]:
        raise ValueError(f"the data's classes {names} are not the specialist's {meta['labels']}")
    x, y = task.load_resized(task.test_split, model.preprocess)
    acc = fit.evaluate(model, x, y, preprocess.for_model(model))
    out = {"top1": acc["top1"], "top5": acc["top5"], "n": len(y), "split": task.test_split,
           "data_dir": task.data_dir}
    report = workdir / "report.json"
    if report.exists() and data_dir is None and split is None:
        out["report_top1"] = json.loads(report.read_text())["compressed"]["top1"]
    return out


def predict_folder(workdir: str | os.PathLike, images: str | os.PathLike,
                   out_csv: str | os.PathLike, batch_size: int = 64) -> int:
    """Classify every image under ``images`` (recursively) with ``workdir``'s specialist; write
    ``out_csv`` (path, predicted class, its softmax probability) atomically. Returns the count."""
    model, meta = _load(workdir)
    files = folder.images_under(images)
    normalize = preprocess.for_model(model)
    rows = []
    for i in range(0, len(files), batch_size):
        chunk = files[i:i + batch_size]
        x = preprocess.to_input_size(source.decode_files(chunk), model.preprocess)
        prob = np.asarray(jax.nn.softmax(fit.predict_logits(model, x, normalize, batch_size)))
        for f, p in zip(chunk, prob, strict=True):
            rows.append((str(f), meta["labels"][int(p.argmax())], f"{float(p.max()):.6f}"))
    with replaced_atomically(out_csv) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(("path", "class", "probability"))
        writer.writerows(rows)
    logging.info("wrote %d predictions to %s", len(rows), out_csv)
    return len(rows)


