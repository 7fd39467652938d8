"""Parameter counts and MACs against the published model-card figures."""

import pytest
from flax import nnx

from taco_jax.models import create
from taco_jax.models.stats import forward_macs, param_count

# Published GMACs ("GFLOPS" in torchvision's tables; DeiT paper for DeiT-Ti) at 224².
PUBLISHED_GMACS = {"resnet18": 1.81, "convnext_tiny": 4.46, "deit_tiny_patch16_224": 1.3}


@pytest.mark.parametrize(("name", "gmacs"), sorted(PUBLISHED_GMACS.items()))
def test_macs_match_published(name, gmacs):
    model = nnx.eval_shape(lambda: create(name, num_classes=1000))
    macs = forward_macs(model, (1, 224, 224, 3))
    assert round(macs / 1e9, len(str(gmacs).split(".")[1])) == gmacs
    assert forward_macs(model, (4, 224, 224, 3)) == 4 * macs


def test_macs_follow_pruned_shapes():
    model = nnx.eval_shape(lambda: create("vit_mini", num_classes=10))
    before = forward_macs(model, (1, 28, 28, 1))
    blk = model.blocks[0]
    hidden = blk.mlp.fc1.out_features
    blk.mlp.fc1 = nnx.Linear(blk.mlp.fc1.in_features, hidden // 2, rngs=nnx.Rngs(0))
    blk.mlp.fc2 = nnx.Linear(hidden // 2, blk.mlp.fc2.out_features, rngs=nnx.Rngs(0))
    tokens, dim = 50, model.num_features
    assert before - forward_macs(model, (1, 28, 28, 1)) == tokens * dim * hidden  # half of 2 layers
    blk.attn = None
    full = nnx.eval_shape(lambda: create("vit_mini", num_classes=10))
    removed_attn, halved_mlp = 4 * dim * dim + 4 * dim, dim * hidden + hidden // 2
    assert param_count(full) - param_count(model) == removed_attn + halved_mlp
