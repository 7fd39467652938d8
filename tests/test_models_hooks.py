"""The contract with the compressors: shapes follow the parameters, branches can be removed,
layers can be swapped by dotted name."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from taco_jax.models import create, get_layer, named_layers, set_layer

X = jax.random.normal(jax.random.key(1), (2, 28, 28, 1))


def _narrow_linear(layer: nnx.Linear, *, keep_in=None, keep_out=None) -> nnx.Linear:
    """A copy of ``layer`` restricted to some input rows / output columns of its kernel."""
    k, b = layer.kernel.value, layer.bias.value
    if keep_in is not None:
        k = k[keep_in]
    if keep_out is not None:
        k, b = k[:, keep_out], b[keep_out]
    new = nnx.Linear(k.shape[0], k.shape[1], rngs=nnx.Rngs(0))
    new.kernel.value, new.bias.value = k, b
    return new


def test_vit_head_pruning_derives_num_heads_from_qkv():
    model = create("vit_mini", num_classes=5)
    model.eval()
    attn = model.blocks[1].attn
    hd, d = attn.head_dim, model.num_features
    heads = d // hd
    # Zeroing head 0's output rows of proj is the same as removing head 0 entirely.
    keep = np.arange(hd, heads * hd)
    qkv_keep = np.concatenate([keep + i * heads * hd for i in range(3)])
    proj = attn.proj
    proj.kernel.value = proj.kernel.value.at[:hd].set(0.0)
    before = model(X)
    set_layer(model, "blocks.1.attn.qkv", _narrow_linear(attn.qkv, keep_out=qkv_keep))
    set_layer(model, "blocks.1.attn.proj", _narrow_linear(proj, keep_in=keep))
    np.testing.assert_allclose(model(X), before, atol=1e-5)


def test_vit_mlp_width_follows_fc1_fc2():
    model = create("vit_mini", num_classes=5)
    mlp = model.blocks[0].mlp
    keep = np.arange(0, mlp.fc1.kernel.value.shape[1], 2)
    mlp.fc2.kernel.value = mlp.fc2.kernel.value.at[1::2].set(0.0)
    before = model(X)
    set_layer(model, "blocks.0.mlp.fc1", _narrow_linear(mlp.fc1, keep_out=keep))
    set_layer(model, "blocks.0.mlp.fc2", _narrow_linear(mlp.fc2, keep_in=keep))
    np.testing.assert_allclose(model(X), before, atol=1e-5)


def test_dcvit_removing_attention_skips_the_branch():
    model = create("vit_mini", num_classes=5)
    blk = model.blocks[2]
    blk.attn.proj.kernel.value = jnp.zeros_like(blk.attn.proj.kernel.value)
    blk.attn.proj.bias.value = jnp.zeros_like(blk.attn.proj.bias.value)
    before = model(X)  # the attention branch adds exactly zero
    blk.attn = None
    np.testing.assert_allclose(model(X), before, atol=1e-6)
    assert not any(n.startswith("blocks.2.attn") for n in named_layers(model))


def test_resnet_channel_shrink_with_batchnorm():
    model = create("resnet_mini", num_classes=5)
    model.eval()
    blk = model.layer2[0]
    c = blk.conv1.out_features
    keep = np.arange(c // 2)
    new_conv = nnx.Conv(blk.conv1.in_features, len(keep), (3, 3), strides=2,
                        padding=((1, 1), (1, 1)), use_bias=False, rngs=nnx.Rngs(0))
    new_conv.kernel.value = blk.conv1.kernel.value[..., keep]
    new_bn = nnx.BatchNorm(len(keep), rngs=nnx.Rngs(0))
    for attr in ("scale", "bias", "mean", "var"):
        getattr(new_bn, attr).value = getattr(blk.bn1, attr).value[keep]
    new_bn.epsilon = blk.bn1.epsilon
    new_conv2 = nnx.Conv(len(keep), blk.conv2.out_features, (3, 3), padding=((1, 1), (1, 1)),
                         use_bias=False, rngs=nnx.Rngs(0))
    new_conv2.kernel.value = blk.conv2.kernel.value[:, :, keep]
    blk.conv2.kernel.value = blk.conv2.kernel.value.at[:, :, c // 2:].set(0.0)
    before = model(X)
    set_layer(model, "layer2.0.conv1", new_conv)
    set_layer(model, "layer2.0.bn1", new_bn)
    set_layer(model, "layer2.0.conv2", new_conv2)
    new_bn.use_running_average = True
    np.testing.assert_allclose(model(X), before, atol=1e-5)


class _MaskedLinear(nnx.Module):
    """Stand-in for a sparse linear: same call signature as nnx.Linear."""

    def __init__(self, dense: nnx.Linear):
        self.kernel = nnx.Param(dense.kernel.value * (jnp.abs(dense.kernel.value) > 0.01))
        self.bias = nnx.Param(dense.bias.value)

    def __call__(self, x):
        return x @ self.kernel.value + self.bias.value


def test_any_layer_can_be_swapped_for_a_sparse_one():
    model = create("vit_mini", num_classes=5)
    set_layer(model, "blocks.0.mlp.fc1", _MaskedLinear(get_layer(model, "blocks.0.mlp.fc1")))
    set_layer(model, "head", _MaskedLinear(get_layer(model, "head")))
    assert model(X).shape == (2, 5)
