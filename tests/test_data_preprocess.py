"""The batched eval transform against PIL itself (float 'F' images and uint8 RGB)."""

import numpy as np
import PIL.Image
import pytest

from taco_jax.data import preprocess
from taco_jax.models import PRESETS, Preprocess

_PIL = {"bicubic": PIL.Image.BICUBIC, "bilinear": PIL.Image.BILINEAR,
        "nearest": PIL.Image.NEAREST}
SIZES = [(100, 150), (73, 73), (300, 90), (60, 80), (500, 333), (81, 64)]


def _smooth_image(rng, h, w):
    """A structured image (gradients + blobs, ~10 levels per pixel) so an offset or kernel bug
    shows up as several grey levels."""
    y, x = np.mgrid[0:h, 0:w] / 7.0
    chans = [np.sin(x * (c + 1) * 0.9 + rng.uniform(0, 6)) * np.cos(y * 1.3 + c) for c in range(3)]
    return np.clip(np.stack(chans, -1) * 120 + 128, 0, 255).astype(np.uint8)


def _pil_reference(image, p, mode):
    """torchvision's eval recipe with PIL: Resize(shorter side) then CenterCrop, in float64."""
    h, w = image.shape[:2]
    short, long = min(h, w), max(h, w)
    new_long = int(p.resize_size * long / short)
    rh, rw = (p.resize_size, new_long) if w >= h else (new_long, p.resize_size)
    if mode == "F":
        resized = np.stack([np.asarray(PIL.Image.fromarray(image[..., c].astype(np.float32), "F")
                                       .resize((rw, rh), _PIL[p.interpolation]))
                            for c in range(image.shape[2])], -1).astype(np.float64)
        resized = np.clip(resized, 0, 255)
    else:
        resized = np.asarray(PIL.Image.fromarray(image).resize((rw, rh), _PIL[p.interpolation]),
                             np.float64)
    top = round((rh - p.input_size) / 2.0)
    left = round((rw - p.input_size) / 2.0)
    return resized[top:top + p.input_size, left:left + p.input_size]


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear", "nearest"])
def test_resize_center_crop_matches_pil(interpolation):
    rng = np.random.default_rng(0)
    p = Preprocess(64, 73, interpolation)
    noise = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in SIZES]
    smooth = [_smooth_image(rng, h, w) for h, w in SIZES]
    out = np.asarray(preprocess.resize_center_crop(*preprocess.pad_batch(noise + smooth), p))
    assert out.shape == (2 * len(SIZES), 64, 64, 3)
    for got, image in zip(out, noise + smooth, strict=True):
        # Same algorithm in float: PIL's 'F' mode (float32 sums, float64 coefficients).
        np.testing.assert_allclose(got, _pil_reference(image, p, "F"), atol=2e-3)
    for got, image in zip(out[len(SIZES):], smooth, strict=True):
        # PIL's uint8 RGB path rounds (and clips) after each of its two passes, in fixed
        # point: within 1.5 grey levels, 0.4 on average (a half-pixel offset costs ~10).
        diff = np.abs(got - _pil_reference(image, p, "RGB"))
        assert diff.max() <= (0 if interpolation == "nearest" else 1.5), diff.max()
        assert diff.mean() <= 0.4, diff.mean()


def test_output_sizes_follow_torchvision():
    rh, rw = preprocess.resized_shape(np.array([500, 333, 256]), np.array([333, 500, 256]), 256)
    np.testing.assert_array_equal(rh, [384, 256, 256])  # int(256 * 500 / 333) = 384
    np.testing.assert_array_equal(rw, [256, 384, 256])


def test_eval_transform_normalizes_and_skips_resampling_at_model_size():
    rng = np.random.default_rng(1)
    p = PRESETS["deit"].at_size(32)  # resize 37, crop 32, ImageNet mean/std
    images = [_smooth_image(rng, 48, 40), _smooth_image(rng, 37, 60)]
    x = np.asarray(preprocess.eval_transform(p)(images))
    for got, image in zip(x, images, strict=True):
        expected = (_pil_reference(image, p, "F") / 255 - np.array(p.mean)) / np.array(p.std)
        np.testing.assert_allclose(got, expected, atol=1e-4)
    mini = PRESETS["mini"]
    digits = [rng.integers(0, 256, (28, 28, 1), dtype=np.uint8) for _ in range(3)]
    np.testing.assert_allclose(preprocess.eval_transform(mini)(digits),
                               (np.stack(digits) / 255 - 0.5) / 0.5, atol=1e-6)


def test_crop_larger_than_resize_is_an_error():
    with pytest.raises(ValueError, match="need 0 < input_size <= resize_size, got 24, 20"):
        Preprocess(24, 20, "bilinear")
    with pytest.raises(ValueError, match="resize_mode must be one of"):
        Preprocess(24, 24, "bilinear", resize_mode="stretch")


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_squash_resize_matches_pil(interpolation):
    """Hugging Face's ViT processor: both sides to the size (aspect not kept), then the crop."""
    rng = np.random.default_rng(2)
    p = Preprocess(40, 44, interpolation, resize_mode="squash")
    images = [_smooth_image(rng, h, w) for h, w in SIZES]
    out = np.asarray(preprocess.resize_center_crop(*preprocess.pad_batch(images), p))
    for got, image in zip(out, images, strict=True):
        ref = np.stack([np.asarray(PIL.Image.fromarray(image[..., c].astype(np.float32), "F")
                                   .resize((44, 44), _PIL[interpolation]))
                        for c in range(3)], -1).astype(np.float64)
        np.testing.assert_allclose(got, np.clip(ref, 0, 255)[2:42, 2:42], atol=2e-3)
