"""Every zoo family's ``segments()`` chain composes to exactly its ``__call__``."""

import jax
import numpy as np
import pytest
from flax import nnx

from taco_jax.models import create

CASES = [
    ("resnet_mini", {}, 28, 1),
    ("resnet50", {}, 32, 3),
    ("vit_mini", {}, 28, 1),
    ("deit_tiny_distilled_patch16_224", {"depth": 2}, 224, 3),
    ("convnext_tiny", {"depths": (1, 1, 1, 1), "dims": (8, 16, 24, 32)}, 64, 3),
]


@pytest.mark.parametrize("name,overrides,size,chans", CASES, ids=[c[0] for c in CASES])
def test_segments_compose_to_the_forward_pass(name, overrides, size, chans):
    model = create(name, num_classes=7, **overrides)
    model.eval()
    x = jax.random.normal(jax.random.key(1), (2, size, size, chans))

    @nnx.jit
    def chain_and_call(model, x):
        y = x
        for segment in model.segments():
            y = segment(y)
        return y, model(x)

    y, ref = chain_and_call(model, x)
    np.testing.assert_allclose(np.asarray(y), np.asarray(ref), rtol=1e-6, atol=1e-6)
    assert y.shape == (2, 7)
