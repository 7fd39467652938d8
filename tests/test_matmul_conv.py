"""Non-overlapping convs as matmuls: the values and gradients of ``lax.conv_general_dilated``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from taco_jax.models import matmul_conv


def _ref64(x: np.ndarray, w: np.ndarray, s: int) -> np.ndarray:
    """float64 direct convolution, NHWC × HWIO, no padding."""
    k = w.shape[0]
    ho, wo = (x.shape[1] - k) // s + 1, (x.shape[2] - k) // s + 1
    y = np.zeros((x.shape[0], ho, wo, w.shape[-1]))
    for i in range(ho):
        for j in range(wo):
            patch = x[:, i * s:i * s + k, j * s:j * s + k, :]
            y[:, i, j] = np.einsum("bhwc,hwco->bo", patch, w)
    return y


# (spatial size, kernel, stride): 1×1, ResNet's stride-2 shortcut on even and odd sizes,
# a ViT patch embedding, ConvNeXt's 2×2 down-sampling on an odd size, kernel < stride.
CASES = [(8, 1, 1), (8, 1, 2), (7, 1, 2), (16, 4, 4), (7, 2, 2), (9, 2, 3)]


@pytest.mark.parametrize("n,k,s", CASES)
def test_matmul_conv_matches_float64_and_lax(n, k, s):
    rng = np.random.default_rng(n * 100 + k * 10 + s)
    x = rng.normal(size=(3, n, n, 5))
    w = rng.normal(size=(k, k, 5, 6))
    dn = ("NHWC", "HWIO", "NHWC")
    xf, wf = jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32)
    ours = matmul_conv.conv_general_dilated(xf, wf, (s, s), "VALID", dimension_numbers=dn)
    ref = _ref64(x, w, s)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(np.asarray(ours), ref, rtol=1e-5, atol=1e-5)

    cot = jnp.asarray(rng.normal(size=ref.shape), jnp.float32)

    def loss(fn, x, w):  # linear in y: its gradients are the transposed conv of a random cotangent
        return jnp.sum(fn(x, w, (s, s), ((0, 0), (0, 0)), dimension_numbers=dn) * cot)

    g_ours = jax.grad(lambda a, b: loss(matmul_conv.conv_general_dilated, a, b), (0, 1))(xf, wf)
    g_lax = jax.grad(lambda a, b: loss(lax.conv_general_dilated, a, b), (0, 1))(xf, wf)
    for a, b in zip(g_ours, g_lax, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)


def test_matmul_conv_takes_an_empty_batch():
    """A batch of 0 images (latency probes, data-parallel shards) gives an empty output."""
    y = matmul_conv.conv_general_dilated(jnp.zeros((0, 7, 7, 4)), jnp.ones((1, 1, 4, 2)), (2, 2),
                                         "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    assert y.shape == (0, 4, 4, 2)


def test_matmul_conv_runs_as_a_dot_only_where_exact():
    x = jnp.ones((1, 8, 8, 4))

    def prims(w, strides, padding, **kw):
        jaxpr = jax.make_jaxpr(lambda a, b: matmul_conv.conv_general_dilated(
            a, b, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"), **kw))(x, w)
        return {e.primitive.name for e in jaxpr.eqns}

    assert "dot_general" in prims(jnp.ones((1, 1, 4, 2)), (1, 1), "VALID")
    assert "conv_general_dilated" not in prims(jnp.ones((2, 2, 4, 2)), (2, 2), ((0, 0), (0, 0)))
    # overlapping windows, padding, groups: the convolution itself
    assert "conv_general_dilated" in prims(jnp.ones((3, 3, 4, 2)), (1, 1), ((1, 1), (1, 1)))
    assert "conv_general_dilated" in prims(jnp.ones((1, 1, 4, 2)), (1, 1), ((1, 1), (1, 1)))
    assert "conv_general_dilated" in prims(jnp.ones((1, 1, 2, 4)), (1, 1), "VALID",
                                           feature_group_count=2)
