"""Registry entries: every name builds with the right output shape and published parameter count
(abstractly, via ``eval_shape``); the mini variants run for real in train and eval mode."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from taco_jax.models import create, get_layer, named_layers, names

# Published parameter counts at 1000 classes (torchvision / timm model cards).
PUBLISHED_PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "vit_tiny_patch16_224": 5_717_416,
    "vit_small_patch16_224": 22_050_664,
    "vit_base_patch16_224": 86_567_656,
    "vit_large_patch16_224": 304_326_632,
    "deit_tiny_patch16_224": 5_717_416,
    "deit_small_patch16_224": 22_050_664,
    "deit_base_patch16_224": 86_567_656,
    "deit_tiny_distilled_patch16_224": 5_910_800,
    "deit_small_distilled_patch16_224": 22_436_432,
    "deit_base_distilled_patch16_224": 87_338_192,
    "convnext_tiny": 28_589_128,
    "convnext_small": 50_223_688,
    "convnext_base": 88_591_464,
}
MINI = ("resnet_mini", "vit_mini")


def _param_count(model: nnx.Module) -> int:
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


def _abstract_forward(name: str, x: jax.ShapeDtypeStruct):
    def run(x):
        model = create(name, num_classes=1000)
        model.eval()
        return model(x), model.forward_features(x)

    return jax.eval_shape(run, x)


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_entry_shapes_and_published_param_count(name):
    model = nnx.eval_shape(lambda: create(name, num_classes=1000))
    assert _param_count(model) == PUBLISHED_PARAMS[name]
    logits, feats = _abstract_forward(name, jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32))
    assert logits.shape == (2, 1000)
    assert feats.shape == (2, model.num_features)
    assert isinstance(get_layer(model, model.head_name), nnx.Linear)


def test_every_name_is_covered():
    assert set(names()) == set(PUBLISHED_PARAMS) | set(MINI)


@pytest.mark.parametrize("name", MINI)
def test_mini_runs_in_train_and_eval_mode(name):
    model = create(name, num_classes=20)
    x = jax.random.normal(jax.random.key(0), (4, 28, 28, 1))
    model.train()
    train_logits = model(x)
    model.eval()
    logits = model(x)
    assert logits.shape == train_logits.shape == (4, 20)
    assert np.isfinite(logits).all()
    head = get_layer(model, model.head_name)
    np.testing.assert_allclose(head(model.forward_features(x)), logits, atol=1e-5)
    assert model.preprocess.input_size == 28 and len(model.preprocess.mean) == 1


def test_mini_overrides():
    model = create("vit_mini", num_classes=3, in_chans=3, img_size=32, depth=2)
    assert len(model.blocks) == 2
    assert model(jnp.zeros((1, 32, 32, 3))).shape == (1, 3)
    model = create("resnet_mini", num_classes=3, in_chans=3)
    assert model(jnp.zeros((1, 20, 20, 3))).shape == (1, 3)


def test_resnet_names_follow_torchvision():
    layers = named_layers(nnx.eval_shape(lambda: create("resnet50", num_classes=10)))
    for name in ("conv1", "layer1.0.conv3", "layer1.0.downsample.0", "layer4.2.conv2", "fc"):
        assert name in layers
    assert len(layers) == 53 + 1  # 49 convs + 4 downsample convs, fc
