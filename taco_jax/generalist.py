"""The embedded generalist: a small model trained on all 20 embedded classes, cached on disk.

The demo needs a "large, general" model to specialise. Its checkpoint is looked up by a key that
holds every setting that changes the weights (architecture, dataset version, training recipe), so
a different recipe never reuses a stale checkpoint: first in the checkpoints shipped inside the
package (``taco_jax/assets/generalist``, made by ``python -m launch.train_generalist``), then in
the user cache; if neither has it, it is trained here and cached as an orbax checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import jax
from absl import logging
from flax import nnx

from taco_jax import checkpoint, distributed, models
from taco_jax.data import embedded, preprocess, source
from taco_jax.train import fit

SHIPPED_DIR = Path(__file__).parent / "assets"

CLASS_NAMES = embedded.CLASS_NAMES  # a generalist's classifier rows, in order

# Training steps of the default recipe: a ViT (no convolutional prior) needs far longer on these
# 12k images, vit_mini reaching 82.6% test top-1 after 1,500 steps, 96.4% after 6,000
# (BUILD_NOTES, session 7). These are the shipped generalists' recipes.
STEPS = {"vit_mini": 6000}
DEFAULT_STEPS = 1500


def default_cache_dir() -> Path:
    """$TACO_JAX_CACHE, else ~/.cache/taco_jax."""
    return Path(os.environ.get("TACO_JAX_CACHE", Path.home() / ".cache" / "taco_jax"))


def _build(arch: str, seed: int) -> nnx.Module:
    return models.create(arch, num_classes=len(embedded.CLASS_NAMES), rngs=nnx.Rngs(seed))


# FitConfig's fields when the recipe hash was introduced: always hashed. A field added later
# enters the hash only when set away from its default, so adding one keeps every cached or
# shipped generalist findable.
_HASHED_ALWAYS = ("steps", "batch_size", "learning_rate", "weight_decay", "warmup_steps",
                  "optimizer", "ce_weight", "kd_weight", "temperature", "augment", "seed",
                  "log_every")


def recipe_fields(config: fit.FitConfig) -> dict:
    """The training fields that name a generalist (its cache key)."""
    default = fit.FitConfig()
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
            if f.name in _HASHED_ALWAYS or getattr(config, f.name) != getattr(default, f.name)}


def recipe(arch: str, steps: int = 0) -> fit.FitConfig:
    """The default training recipe of the ``arch`` generalist (the shipped checkpoints' and the
    launchers' ``config.generalist``): AdamW 2e-3 with warm-up, batch 128, shifts (no flips:
    digits are not mirror-symmetric); ``steps`` 0 = the model's default (``STEPS``)."""
    if steps < 0:
        raise ValueError(f"generalist steps={steps}; expected >= 1, or 0 for the model's "
                         f"default ({DEFAULT_STEPS}, {STEPS} by model)")
    return fit.FitConfig(steps=steps or STEPS.get(arch, DEFAULT_STEPS), batch_size=128,
                         learning_rate=2e-3, weight_decay=0.05, warmup_steps=100,
                         augment="shift")


def load(arch: str = "resnet_mini", *, data_dir: str | None = None,
         cache_dir: str | os.PathLike | None = None) -> nnx.Module:
    """The ``arch`` generalist of the embedded default with the default ``recipe`` (the
    shipped checkpoint for resnet_mini and vit_mini; others are trained once and cached), in
    eval mode; its classifier rows are ``CLASS_NAMES``."""
    model, _ = load_or_train(arch, recipe(arch), data_dir=data_dir, cache_dir=cache_dir)
    return model


def load_or_train(
    arch: str,
    train_config: fit.FitConfig,
    *,
    data_dir: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[nnx.Module, dict]:
    """The 20-class embedded generalist ``arch`` and its info (cache path, test accuracy, time).

    Trains with ``train_config`` on the embedded train split if no cached checkpoint exists.
    """
    recipe = {"arch": arch, "dataset": f"{source.EMBEDDED}:{embedded.TacoEmbedded.VERSION}",
              "train": recipe_fields(train_config)}
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    name = Path("generalist") / f"{arch}-{key}"
    model = _build(arch, train_config.seed)
    shipped = SHIPPED_DIR / name
    path = shipped if (shipped / "info.json").exists() else Path(
        cache_dir or default_cache_dir()) / name
    info_file = path / "info.json"
    if info_file.exists():
        checkpoint.restore_state(path / "state", model)
        model.eval()
        info = {**json.loads(info_file.read_text()), "path": str(path)}
        logging.info("Restored the %s generalist from %s (test top-1 %.2f%%).", arch, path,
                     info["test_top1"])
        return model, info

    logging.info("Training the %s generalist on the embedded 20-class train split (once; cached "
                 "at %s).", arch, path)
    data = source.read_split(source.EMBEDDED, "train", data_dir)
    test = source.read_split(source.EMBEDDED, "test", data_dir)
    normalize = preprocess.for_model(model)
    start = time.perf_counter()
    fit.fit(model, data["image"], data["label"], train_config, normalize, desc="generalist")
    distributed.broadcast_model(model)  # several processes: all keep process 0's weights
    seconds = time.perf_counter() - start
    acc = fit.evaluate(model, test["image"], test["label"], normalize)
    info = {"recipe": recipe, "test_top1": acc["top1"], "test_top5": acc["top5"],
            "train_seconds": seconds}
    _save_atomically(path, model, info)
    info["path"] = str(path)
    logging.info("Generalist %s: test top-1 %.2f%% after %.0fs.", arch, acc["top1"], seconds)
    return model, info


def _save_atomically(path: Path, model: nnx.Module, info: dict) -> None:
    """Write the generalist to a private sibling folder, then rename it to ``path``: a reader
    never sees a half-written cache entry, and of two processes training the same recipe at
    once (two test workers, two runs) the first to finish keeps its copy."""
    main = distributed.is_main()  # process 0 writes; every process takes part in orbax's save
    owner = os.getpid() if jax.process_count() == 1 else "job"  # one job's processes agree
    tmp = path.with_name(f".{path.name}.incomplete-{owner}")
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    distributed.barrier("generalist: directory")
    checkpoint.save_state(tmp / "state", model)
    if main:
        (tmp / "info.json").write_text(json.dumps(info, indent=2))
        if path.exists() and not (path / "info.json").exists():
            shutil.rmtree(path)  # left by an interrupted save of an older version
        try:
            tmp.rename(path)
        except OSError:  # another process finished the same recipe first: keep its copy
            if not (path / "info.json").exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    distributed.barrier("generalist: saved")
