"""The shipped embedded generalists (TACO's resnet_mini; DC-ViT's vit_mini, also TACO's
``model=vit_mini``): found for their recipes, load, and are as accurate as their recorded test
accuracy (re-evaluated here), so a model-code change that breaks one fails CI."""

import importlib
import json
from pathlib import Path

import pytest

from taco_jax import generalist
from taco_jax.data import preprocess, source
from taco_jax.run import common
from taco_jax.train import fit


@pytest.mark.parametrize("config_module, arch, floor", [
    ("configs.taco.demo", "resnet_mini", 85.0),
    ("configs.dcvit.demo", "vit_mini", 95.0),
])
def test_shipped_generalist_matches_its_recorded_accuracy(tmp_path, config_module, arch, floor):
    config = importlib.import_module(config_module).get_config()
    assert config.model.name == arch
    src = common.parse_source(config)
    # An empty cache dir: the model must come from the package, not be trained here.
    model, info = generalist.load_or_train(src.model.arch, src.generalist,
                                           cache_dir=tmp_path)
    assert Path(info["path"]).is_relative_to(generalist.SHIPPED_DIR), info["path"]
    assert not any(tmp_path.iterdir())
    test = source.read_split(source.EMBEDDED, "test")
    acc = fit.evaluate(model, test["image"], test["label"], preprocess.for_model(model))
    assert acc["top1"] == pytest.approx(info["test_top1"], abs=0.05)
    assert acc["top1"] > floor
    recorded = json.loads((Path(info["path"]) / "info.json").read_text())
    assert recorded["recipe"]["arch"] == arch


def test_new_fit_fields_at_their_defaults_keep_the_recipe_key(monkeypatch):
    import dataclasses

    from taco_jax import generalist
    from taco_jax.train import fit

    base = generalist.recipe_fields(fit.FitConfig())
    assert set(base) == set(generalist._HASHED_ALWAYS)
    # A field added later enters the key only when set away from its default.
    newer = dataclasses.make_dataclass("NewerFit", [("novel", float, 0.0)], bases=(fit.FitConfig,),
                                       frozen=True)
    monkeypatch.setattr(fit, "FitConfig", newer)
    assert generalist.recipe_fields(newer()) == base
    assert generalist.recipe_fields(newer(novel=0.5))["novel"] == 0.5
