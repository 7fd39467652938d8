"""Why a recovery step is slow on XLA:CPU (issue #7, session 8): a 3×3 conv's forward, its input
gradient and its weight gradient, and the weight gradient written by hand (nine shifted
matmuls; one im2col matmul), batch 64 at resnet_mini's shapes. Measurement only.

  PYTHONPATH=. .venv/bin/python notes/cpu_conv_grad.py
"""
import time

import jax
import jax.numpy as jnp
import numpy as np


def median_ms(f, *args, repeats=20):
    jax.block_until_ready(f(*args))  # compile and warm up first
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - t)
    return np.median(times) * 1e3


def conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _windows(x):
    """The nine 3×3-shifted views (N, H, W, C) of x with SAME padding."""
    side = x.shape[1]
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return [xp[:, i:i + side, j:j + side] for i in range(3) for j in range(3)]


@jax.jit
def shifted(x, dy):
    grads = [jnp.einsum("nhwc,nhwo->co", v, dy) for v in _windows(x)]
    return jnp.stack(grads).reshape(3, 3, x.shape[-1], dy.shape[-1])


@jax.jit
def im2col(x, dy):
    c, o = x.shape[-1], dy.shape[-1]
    p = jnp.concatenate(_windows(x), -1).reshape(-1, 9 * c)
    return (p.T @ dy.reshape(-1, o)).reshape(3, 3, c, o)


forward = jax.jit(conv)
grad_x = jax.jit(lambda x, w, dy: jax.vjp(lambda v: conv(v, w), x)[1](dy)[0])
grad_w = jax.jit(lambda x, w, dy: jax.vjp(lambda v: conv(x, v), w)[1](dy)[0])
for side, c in ((28, 16), (14, 32), (7, 64)):
    x = jax.random.normal(jax.random.key(0), (64, side, side, c))
    dy = jax.random.normal(jax.random.key(1), (64, side, side, c))
    w = jax.random.normal(jax.random.key(2), (3, 3, c, c)) * 0.1
    want = grad_w(x, w, dy)
    for f in (shifted, im2col):
        np.testing.assert_allclose(f(x, dy), want, rtol=1e-3, atol=1e-2)
    ms = [median_ms(forward, x, w), median_ms(grad_x, x, w, dy), median_ms(grad_w, x, w, dy),
          median_ms(shifted, x, dy), median_ms(im2col, x, dy)]
    print(f"64x{side}x{side}x{c} 3x3, ms: forward {ms[0]:.2f}, input grad {ms[1]:.2f}, weight "
          f"grad {ms[2]:.2f}; weight grad by hand: shifted {ms[3]:.2f}, im2col {ms[4]:.2f}")
