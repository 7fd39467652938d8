"""Preprocess: presets, resizing the recipe, normalization, serialization."""

import numpy as np
import pytest

from taco_jax.models import PRESETS, Preprocess, create


def test_presets_follow_the_source_recipes():
    assert (PRESETS["torchvision"].resize_size, PRESETS["torchvision"].input_size) == (256, 224)
    assert PRESETS["deit"].resize_size == 256 and PRESETS["augreg"].resize_size == 248
    assert PRESETS["augreg"].mean == (0.5, 0.5, 0.5)
    assert PRESETS["deit"].at_size(384).resize_size == round(384 / 0.875)


def test_models_carry_their_preprocessing():
    assert create("vit_mini", num_classes=2).preprocess == Preprocess(
        28, 28, "bilinear", (0.5,), (0.5,))
    vit = create("vit_tiny_patch16_224", num_classes=2, img_size=32)
    assert vit.preprocess.input_size == 32 and vit.preprocess.interpolation == "bicubic"


def test_normalize_and_round_trip():
    p = PRESETS["deit"]
    x = np.full((2, 4, 4, 3), 0.5, np.float32)
    expected = (0.5 - np.array(p.mean)) / np.array(p.std)
    np.testing.assert_allclose(p.normalize(x)[0, 0, 0], expected, rtol=1e-6)
    with pytest.raises(ValueError, match="1 channels, preprocessing expects 3"):
        p.normalize(np.zeros((4, 4, 1)))
    assert Preprocess.from_dict(p.to_dict()) == p
    with pytest.raises(ValueError, match="interpolation must be"):
        Preprocess(224, 256, "lanczos")
    with pytest.raises(ValueError, match=r"std must be > 0 per channel, got \(0.5, 0.0\)"):
        Preprocess(28, 28, "bilinear", mean=(0.5, 0.5), std=(0.5, 0.0))
