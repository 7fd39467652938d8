"""Small models with the zoo's layer conventions, shared by the pruning tests (no tests here)."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


class Attention(nnx.Module):
    """Fused qkv ``[q | k | v]`` head-major, heads derived from the qkv width (as the zoo)."""

    def __init__(self, d, heads, rngs):
        self.head_dim = d // heads
        self.qkv = nnx.Linear(d, 3 * d, rngs=rngs)
        self.proj = nnx.Linear(d, d, rngs=rngs)

    def __call__(self, x):
        b, n, _ = x.shape
        heads = self.qkv.out_features // (3 * self.head_dim)
        q, k, v = self.qkv(x).reshape(b, n, 3, heads, self.head_dim).transpose(2, 0, 3, 1, 4)
        a = jax.nn.softmax(jnp.einsum("bhqd,bhkd->bhqk", q, k) * self.head_dim**-0.5)
        return self.proj(jnp.einsum("bhqk,bhkd->bqhd", a, v).reshape(b, n, -1))


class Mlp(nnx.Module):
    def __init__(self, d, hidden, rngs):
        self.fc1 = nnx.Linear(d, hidden, rngs=rngs)
        self.fc2 = nnx.Linear(hidden, d, rngs=rngs)

    def __call__(self, x):
        return self.fc2(nnx.gelu(self.fc1(x)))


class TinyViT(nnx.Module):
    head_name = "head"

    def __init__(self, rngs, d=32, heads=4, depth=2):
        self.patch = nnx.Conv(3, d, (4, 4), strides=4, rngs=rngs)
        self.blocks = nnx.List([nnx.Dict(ln1=nnx.LayerNorm(d, rngs=rngs),
                                         attn=Attention(d, heads, rngs),
                                         ln2=nnx.LayerNorm(d, rngs=rngs),
                                         mlp=Mlp(d, 4 * d, rngs)) for _ in range(depth)])
        self.head = nnx.Linear(d, 5, rngs=rngs)

    def __call__(self, x):
        x = self.patch(x)
        x = x.reshape(x.shape[0], -1, x.shape[-1])
        for b in self.blocks:
            x = x + b["attn"](b["ln1"](x))
            x = x + b["mlp"](b["ln2"](x))
        return self.head(x.mean(1))


class Bottleneck(nnx.Module):
    def __init__(self, c, mid, rngs, stride=1):
        self.conv1 = nnx.Conv(c, mid, (1, 1), use_bias=False, rngs=rngs)
        self.bn1 = nnx.BatchNorm(mid, rngs=rngs)
        self.conv2 = nnx.Conv(mid, mid, (3, 3), strides=stride, padding=((1, 1), (1, 1)),
                              use_bias=False, rngs=rngs)
        self.bn2 = nnx.BatchNorm(mid, rngs=rngs)
        self.conv3 = nnx.Conv(mid, c, (1, 1), use_bias=False, rngs=rngs)
        self.bn3 = nnx.BatchNorm(c, rngs=rngs)
        self.downsample = nnx.Conv(c, c, (1, 1), strides=stride, use_bias=False, rngs=rngs)

    def __call__(self, x):
        h = nnx.relu(self.bn1(self.conv1(x)))
        h = nnx.relu(self.bn2(self.conv2(h)))
        return nnx.relu(self.bn3(self.conv3(h)) + self.downsample(x))


class TinyCNN(nnx.Module):
    """Stem, a bottleneck with strides, a dilated grouped conv and a depthwise conv, a head."""

    head_name = "fc"

    def __init__(self, rngs, c=16):
        self.conv_stem = nnx.Conv(3, c, (3, 3), padding="SAME", rngs=rngs)
        self.block = Bottleneck(c, 16, rngs, stride=2)
        self.grouped = nnx.Conv(c, c, (3, 3), kernel_dilation=2, padding="SAME",
                                feature_group_count=2, rngs=rngs)
        self.dw = nnx.Conv(c, c, (3, 3), padding="SAME", feature_group_count=c, rngs=rngs)
        self.fc = nnx.Linear(c, 5, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.conv_stem(x))
        x = self.block(x)
        x = self.dw(nnx.relu(self.grouped(x)))
        return self.fc(x.mean((1, 2)))


def randomize_batchnorm(model, seed=0):
    """Give every BatchNorm non-trivial running stats and affine parameters."""
    rng = np.random.default_rng(seed)
    for _, m in nnx.iter_graph(model):
        if isinstance(m, nnx.BatchNorm):
            c = m.num_features
            m.mean.set_value(jnp.asarray(rng.normal(size=c) * 0.1, jnp.float32))
            m.var.set_value(jnp.asarray(rng.uniform(0.5, 1.5, c), jnp.float32))
            m.scale.set_value(jnp.asarray(rng.uniform(0.5, 1.5, c), jnp.float32))
            m.bias.set_value(jnp.asarray(rng.normal(size=c) * 0.1, jnp.float32))
    return model


def image_batches(n_batches=3, batch=8, size=16, seed=0):
    """Smooth random images (correlated pixels), a list of NHWC float32 arrays."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_batches):
        x = rng.normal(size=(batch, size, size, 3))
        x = (x + np.roll(x, 1, 1) + np.roll(x, 1, 2)) / 3
        out.append(x.astype(np.float32))
    return out
