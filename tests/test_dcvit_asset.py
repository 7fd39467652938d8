"""The shipped vit_mini generalist (DC-ViT's, and TACO's ``model=vit_mini``): found for the
recipe, loads, and matches its recorded test accuracy, so a model-code change that breaks it
fails CI."""

import json
from pathlib import Path

import pytest

from configs.dcvit.demo import get_config
from taco_jax import generalist
from taco_jax.compress import dcvit_run
from taco_jax.data import preprocess, source
from taco_jax.train import fit


def test_vit_generalist_ships_and_matches_its_recorded_accuracy(tmp_path):
    config = get_config()
    settings = dcvit_run.parse(config)
    model, info = generalist.load_or_train(config.model, settings.generalist, cache_dir=tmp_path)
    assert Path(info["path"]).is_relative_to(generalist.SHIPPED_DIR), info["path"]
    assert not any(tmp_path.iterdir())
    test = source.read_split(source.EMBEDDED, "test")
    acc = fit.evaluate(model, test["image"], test["label"], preprocess.for_model(model))
    assert acc["top1"] == pytest.approx(info["test_top1"], abs=0.05)
    assert acc["top1"] > 80.0
    recorded = json.loads((Path(info["path"]) / "info.json").read_text())
    assert recorded["recipe"]["arch"] == "vit_mini"
