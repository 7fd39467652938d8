"""Dotted layer names: lookup, replacement and clear errors."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from taco_jax.models import get_layer, named_layers, set_layer
from taco_jax.models.paths import body_layers


class _Block(nnx.Module):
    def __init__(self, rngs):
        self.fc1 = nnx.Linear(4, 8, rngs=rngs)
        self.fc2 = nnx.Linear(8, 4, rngs=rngs)

    def __call__(self, x):
        return self.fc2(nnx.gelu(self.fc1(x)))


class _Net(nnx.Module):
    def __init__(self, rngs):
        self.stem = nnx.Conv(1, 4, (3, 3), rngs=rngs)
        self.blocks = nnx.List([_Block(rngs) for _ in range(2)])
        self.head = nnx.Linear(4, 3, rngs=rngs)

    def __call__(self, x):
        x = self.stem(x).mean((1, 2))
        for b in self.blocks:
            x = b(x)
        return self.head(x)


def test_named_layers_lists_every_linear_and_conv():
    names = set(named_layers(_Net(nnx.Rngs(0))))
    assert names == {"stem", "head", "blocks.0.fc1", "blocks.0.fc2", "blocks.1.fc1", "blocks.1.fc2"}


def test_get_and_set_layer_round_trip():
    net = _Net(nnx.Rngs(0))
    x = jnp.ones((2, 5, 5, 1))
    before = net(x)
    fc2 = get_layer(net, "blocks.1.fc2")
    assert fc2.kernel.value.shape == (8, 4)
    zeroed = nnx.Linear(8, 4, rngs=nnx.Rngs(1))
    zeroed.kernel.value = jnp.zeros((8, 4))
    zeroed.bias.value = jnp.zeros((4,))
    set_layer(net, "blocks.1.fc2", zeroed)
    assert get_layer(net, "blocks.1.fc2") is zeroed
    # With the last block's output zeroed, the head sees zeros: logits equal its bias.
    np.testing.assert_allclose(net(x), jnp.broadcast_to(net.head.bias.value, (2, 3)), atol=1e-6)
    assert not np.allclose(before, net(x))


def test_bad_name_lists_valid_names():
    with pytest.raises(KeyError, match=r"no layer named 'blocks.7.fc1'.*blocks.0.fc1"):
        get_layer(_Net(nnx.Rngs(0)), "blocks.7.fc1")


def test_body_layers_leave_out_only_the_named_head():
    net = _Net(nnx.Rngs(0))
    assert body_layers(net) == named_layers(net)  # no head_name: every layer
    assert "head" in body_layers(net)
    net.head_name = "head"
    assert set(body_layers(net)) == set(named_layers(net)) - {"head"}
    assert set(body_layers(net, (nnx.Conv,))) == {"stem"}
