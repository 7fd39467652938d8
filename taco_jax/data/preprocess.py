"""Image preparation: decoded uint8 images of any size -> the float inputs a model was trained on.

The eval transform of timm / torchvision checkpoints is: resize the shorter side to
``resize_size`` with PIL's antialiased filter (the longer side to ``int(resize_size * long /
short)``), center-crop ``input_size``², scale to [0, 1], normalize. Here it runs batched on the
device: images of different sizes are zero-padded into one (B, Hp, Wp, C) uint8 array, the
per-image resampling taps (PIL's ``precompute_coeffs``, only for the rows/columns the crop keeps)
are computed on the host in float64, vectorised over the batch, and the device does two
separable gather-and-weight passes. No Python loop over images or pixels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from taco_jax.models.preprocess import Preprocess

# Filter support (half-width, in source pixels at scale 1) of PIL's resampling filters.
_SUPPORT = {"nearest": 0.5, "bilinear": 1.0, "bicubic": 2.0}
# Padded sizes are rounded up to this many pixels so batches of similar images share a compile.
PAD_MULTIPLE = 32


def _filter(name: str, x: np.ndarray) -> np.ndarray:
    """PIL's filter kernels: triangle (bilinear) and Keys cubic with a = -0.5 (bicubic)."""
    x = np.abs(x)
    if name == "bilinear":
        return np.maximum(1.0 - x, 0.0)
    a = -0.5
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def resized_shape(heights: np.ndarray, widths: np.ndarray, resize_size: int) -> tuple[
        np.ndarray, np.ndarray]:
    """torchvision ``Resize(int)``: shorter side -> ``resize_size``, longer side truncated."""
    heights, widths = np.asarray(heights, np.int64), np.asarray(widths, np.int64)
    short, long = np.minimum(heights, widths), np.maximum(heights, widths)
    new_long = (resize_size * long / short).astype(np.int64)
    wide = widths >= heights
    return np.where(wide, resize_size, new_long), np.where(wide, new_long, resize_size)


def axis_taps(in_sizes: np.ndarray, resized: np.ndarray, offsets: np.ndarray, out_size: int,
              method: str, num_taps: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Resampling taps of one axis for a batch: resize ``in_sizes`` (B,) to ``resized`` (B,)
    and keep ``out_size`` outputs from ``offsets`` (B,) on (the center crop).

    Returns ``start`` (B, out_size) int32, the first source index of each output, and ``weights``
    (B, out_size, K) float32: output o = sum_k weights[o, k] * source[start[o] + k]. PIL's
    ``precompute_coeffs`` in float64 (for ``nearest``, PIL's ``floor((o + 0.5) * scale)``).
    """
    in_sizes = np.asarray(in_sizes, np.float64)[:, None]
    scale = in_sizes / np.asarray(resized, np.float64)[:, None]
    positions = np.asarray(offsets, np.int64)[:, None] + np.arange(out_size)
    if method == "nearest":
        # PIL's affine nearest walks x = scale / 2 + scale + scale + ... (float64 running sum,
        # so exact ties round the way PIL's do), then truncates.
        steps = np.repeat(scale, positions.max() + 1, axis=1)
        steps[:, 0] *= 0.5
        x = np.take_along_axis(np.cumsum(steps, axis=1), positions, axis=1)
        start = np.minimum(np.trunc(x), in_sizes - 1).astype(np.int32)
        return start, np.ones((*start.shape, 1), np.float32)
    center = (positions + 0.5) * scale
    filterscale = np.maximum(scale, 1.0)
    support = _SUPPORT[method] * filterscale
    lo = np.maximum(np.trunc(center - support + 0.5), 0)
    hi = np.minimum(np.trunc(center + support + 0.5), in_sizes)
    k = num_taps or int(np.max(hi - lo))
    x = lo[..., None] + np.arange(k)
    w = _filter(method, (x - center[..., None] + 0.5) / filterscale[..., None])
    w = np.where(x < hi[..., None], w, 0.0)
    total = w.sum(-1, keepdims=True)
    w = w / np.where(total == 0, 1.0, total)
    return lo.astype(np.int32), w.astype(np.float32)


def num_taps(in_sizes: np.ndarray, resized: np.ndarray, method: str) -> int:
    """The static tap count K covering every image of a batch, rounded up to even."""
    if method == "nearest":
        return 1
    support = _SUPPORT[method] * np.maximum(np.asarray(in_sizes) / np.asarray(resized), 1.0)
    k = int(np.ceil(2 * np.max(support))) + 1
    return k + k % 2


def _apply_taps(x: jax.Array, start: jax.Array, w: jax.Array, axis: int) -> jax.Array:
    """Gather-and-weight along ``axis`` (1: rows, 2: columns) of x (B, H, W, C):
    out[:, s] = sum_k w[:, s, k] * x[:, start[:, s] + k]; start (B, S), w (B, S, K)."""
    limit = x.shape[axis] - 1
    take = jax.vmap((lambda img, i: img[i]) if axis == 1 else (lambda img, i: img[:, i]))
    weight = (lambda k: w[:, :, k, None, None]) if axis == 1 else (lambda k: w[:, None, :, k, None])
    # Unrolled over the (static, small) tap count so XLA fuses all taps into one pass.
    return sum(weight(k) * take(x, jnp.minimum(start + k, limit)).astype(jnp.float32)
               for k in range(w.shape[2]))


@jax.jit
def _resample(images, row_start, row_w, col_start, col_w):
    rows = _apply_taps(images, row_start, row_w, axis=1)  # (B, S, Wp, C)
    return jnp.clip(_apply_taps(rows, col_start, col_w, axis=2), 0.0, 255.0)


def pad_batch(images: Sequence[np.ndarray], multiple: int = PAD_MULTIPLE) -> tuple[
        np.ndarray, np.ndarray]:
    """Stack (H_i, W_i, C) uint8 images into one zero-padded (B, Hp, Wp, C) array (Hp, Wp rounded
    up to ``multiple``) and their sizes (B, 2)."""
    sizes = np.array([im.shape[:2] for im in images], np.int64)
    hp, wp = (-(-sizes.max(0) // multiple) * multiple).tolist()
    out = np.zeros((len(images), hp, wp, images[0].shape[2]), np.uint8)
    for i, im in enumerate(images):  # one memcpy per image; the transform itself is batched
        out[i, :im.shape[0], :im.shape[1]] = im
    return out, sizes


def resize_center_crop(padded: np.ndarray, sizes: np.ndarray, p: Preprocess) -> jax.Array:
    """Resize (``p.resize_mode``: shorter side, or both sides, to ``p.resize_size``) + center
    crop ``p.input_size``²:
    padded (B, Hp, Wp, C) uint8 with true sizes (B, 2) -> (B, S, S, C) float32 in [0, 255]."""
    s = p.input_size
    if p.resize_mode == "squash":
        rh = rw = np.full(len(sizes), p.resize_size, np.int64)
    else:
        rh, rw = resized_shape(sizes[:, 0], sizes[:, 1], p.resize_size)
    top, left = np.round((rh - s) / 2.0), np.round((rw - s) / 2.0)  # torchvision CenterCrop
    k_rows = num_taps(sizes[:, 0], rh, p.interpolation)
    k_cols = num_taps(sizes[:, 1], rw, p.interpolation)
    row_start, row_w = axis_taps(sizes[:, 0], rh, top, s, p.interpolation, k_rows)
    col_start, col_w = axis_taps(sizes[:, 1], rw, left, s, p.interpolation, k_cols)
    return _resample(padded, row_start, row_w, col_start, col_w)


def _at_input_size(images: Sequence[np.ndarray], p: Preprocess) -> bool:
    """Every image is already ``p``'s crop and ``p`` resizes to the crop: nothing to resample."""
    return p.resize_size == p.input_size and all(
        im.shape[:2] == (p.input_size,) * 2 for im in images)


def match_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """(..., C) uint8 images with ``channels`` channels: grey (C = 1) repeated to RGB, RGB to
    grey by PIL's ``convert("L")`` luminance (299 R + 587 G + 114 B) / 1000; ValueError for
    any other pair."""
    have = images.shape[-1]
    if have == channels:
        return images
    if have == 1 and channels == 3:
        return np.repeat(images, 3, axis=-1)
    if have == 3 and channels == 1:
        luma = images.astype(np.int32) @ np.array([299, 587, 114], np.int32)
        return ((luma + 500) // 1000).astype(np.uint8)[..., None]
    raise ValueError(f"images have {have} channels; the model takes {channels} (only grey <-> "
                     "RGB is converted)")


def to_input_size(images: Sequence[np.ndarray], p: Preprocess) -> np.ndarray:
    """Decoded uint8 images (a list of (H, W, C), any sizes) -> (B, S, S, C') uint8: ``p``'s
    resize + center crop (its eval transform before scaling and normalising), rounded back to
    uint8 as PIL's resize of a uint8 image is, with C' = ``p``'s channels
    (``match_channels``). What a run stores of a task's images; ``for_model`` then normalises."""
    channels = len(p.mean)
    if _at_input_size(images, p):
        return match_channels(np.stack(images), channels)
    padded, sizes = pad_batch(images)
    resized = np.asarray(resize_center_crop(padded, sizes, p))
    return match_channels(np.round(resized).astype(np.uint8), channels)


def eval_transform(p: Preprocess) -> Callable[[Sequence[np.ndarray]], jax.Array]:
    """Decoded uint8 images (a list of (H, W, C), any sizes) -> normalized model input
    (B, S, S, C) float32, exactly the checkpoint's eval recipe ``p``. Images already at the
    model's input size with ``resize_size == input_size`` skip the resampling."""

    def transform(images: Sequence[np.ndarray]) -> jax.Array:
        if _at_input_size(images, p):
            return p.normalize(jnp.asarray(np.stack(images)).astype(jnp.float32) / 255.0)
        padded, sizes = pad_batch(images)
        return p.normalize(resize_center_crop(padded, sizes, p) / 255.0)

    return transform


def for_model(model: nnx.Module) -> Callable[[jax.Array], jax.Array]:
    """uint8 (B, H, W, C) images already at the model's input size -> the normalised float32
    input of its stored eval transform (``model.preprocess``); jit-friendly."""
    transform = model.preprocess

    def normalize(x: jax.Array) -> jax.Array:
        return transform.normalize(x.astype(jnp.float32) / 255.0)

    return normalize
