"""A checkpoint's eval recipe and labels read from its published metadata (timm config.json,
Hugging Face preprocessor_config.json / config.json), as the source libraries apply them."""

import json

import pytest

from taco_jax.convert import recipe
from taco_jax.models import Preprocess


def test_timm_pretrained_cfg():
    # resnet50.a1_in1k: 224, crop_pct 0.95, bicubic -> resize floor(224 / 0.95) = 235.
    p = recipe.from_timm_config({"input_size": [3, 224, 224], "crop_pct": 0.95,
                                 "interpolation": "bicubic", "test_input_size": [3, 288, 288],
                                 "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]})
    assert p == Preprocess(224, 235, "bicubic")
    # vit_*_384.augreg: 384, crop_pct 1.0, mean = std = 0.5.
    p = recipe.from_timm_config({"input_size": [3, 384, 384], "crop_pct": 1.0,
                                 "interpolation": "bicubic", "mean": [0.5] * 3,
                                 "std": [0.5] * 3})
    assert (p.input_size, p.resize_size, p.mean) == (384, 384, (0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="crop_mode='squash'; only 'center'"):
        recipe.from_timm_config({"input_size": [3, 224, 224], "crop_mode": "squash"})
    with pytest.raises(ValueError, match="a 224x320 input; only square"):
        recipe.from_timm_config({"input_size": [3, 224, 320]})


@pytest.mark.parametrize("config, expected", [
    # google/vit-base-patch16-224: both sides to 224, bilinear, no crop.
    ({"do_resize": True, "size": {"height": 224, "width": 224}, "resample": 2,
      "image_mean": [0.5] * 3, "image_std": [0.5] * 3},
     Preprocess(224, 224, "bilinear", (0.5,) * 3, (0.5,) * 3, resize_mode="squash")),
    # facebook/deit-small-patch16-224: both sides to 256, center crop 224, bicubic.
    ({"size": {"height": 256, "width": 256}, "do_center_crop": True,
      "crop_size": {"height": 224, "width": 224}, "resample": 3},
     Preprocess(224, 256, "bicubic", resize_mode="squash")),
    # facebook/convnext-tiny-224 (and microsoft/resnet-50): shorter side to int(224 / 0.875).
    ({"size": {"shortest_edge": 224}, "crop_pct": 0.875, "resample": 3},
     Preprocess(224, 256, "bicubic")),
    # ConvNeXt at 384: both sides to 384, no crop.
    ({"size": {"shortest_edge": 384}, "crop_pct": 0.875, "resample": 3},
     Preprocess(384, 384, "bicubic", resize_mode="squash")),
])
def test_hf_image_processors(config, expected):
    assert recipe.from_hf_processor(config) == expected


def test_metadata_beside_the_checkpoint(tmp_path):
    src = tmp_path / "model.safetensors"
    assert recipe.read_source_metadata(src) == recipe.SourceMetadata()  # none: not an error
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(
        {"size": {"shortest_edge": 224}, "crop_pct": 0.875, "resample": 3}))
    (tmp_path / "config.json").write_text(json.dumps(
        {"id2label": {"1": "goldfish", "0": "tench", "10": "brambling", "2": "shark"}}))
    meta = recipe.read_source_metadata(src)
    assert meta.recipe == Preprocess(224, 256, "bicubic")
    assert meta.labels == ("tench", "goldfish", "shark", "brambling")  # by integer id
    assert meta.found_in == {"recipe": str(tmp_path / "preprocessor_config.json"),
                             "labels": str(tmp_path / "config.json")}
