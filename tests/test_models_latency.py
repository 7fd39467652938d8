import jax.numpy as jnp
import pytest

from taco_jax.models import create
from taco_jax.models.latency import model_latency


def test_latency_orders_and_scales_with_work():
    model = create("resnet_mini", num_classes=3)
    small = model_latency(model, jnp.zeros((1, 28, 28, 1)), repeats=5, warmup=1)
    big = model_latency(model, jnp.zeros((256, 28, 28, 1)), repeats=5, warmup=1)
    assert 0 < small["min"] <= small["median"] <= small["max"]
    assert small["batch"] == 1 and big["batch"] == 256
    # 256x the work cannot be as fast as one image: catches a timer that misses the compute.
    assert big["min"] > 3 * small["min"]


def test_latency_rejects_bad_counts():
    model = create("resnet_mini", num_classes=3)
    with pytest.raises(ValueError, match="repeats"):
        model_latency(model, jnp.zeros((1, 28, 28, 1)), repeats=0)
