"""Pipeline parts: config variants, head restriction, checkpoints, non-zero counting."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from taco_jax import checkpoint
from taco_jax.compress import adapt, sparsity_report
from taco_jax.config_variants import parse_variant


class _Net(nnx.Module):
    head_name = "head"

    def __init__(self, rngs):
        self.fc = nnx.Linear(6, 8, rngs=rngs)
        self.bn = nnx.BatchNorm(8, rngs=rngs)
        self.head = nnx.Linear(8, 5, rngs=rngs)

    def __call__(self, x):
        return self.head(nnx.relu(self.bn(self.fc(x))))


def test_parse_variant_types_switches_and_errors():
    allowed = {"model": str, "sparsity": float, "shots": int, "runlocal": bool}
    got = parse_variant("model=vit_mini, sparsity=0.75,shots=16,runlocal", allowed)
    assert got == {"model": "vit_mini", "sparsity": 0.75, "shots": 16, "runlocal": True}
    assert parse_variant(None, allowed) == {}
    with pytest.raises(ValueError, match=r"unknown config variant key 'sparsty'.*allowed: model"):
        parse_variant("sparsty=0.5", allowed)
    with pytest.raises(ValueError, match=r"shots='many' is not a valid int"):
        parse_variant("shots=many", allowed)


def test_restrict_head_keeps_the_task_rows():
    net = _Net(nnx.Rngs(0))
    net.eval()
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 6)), jnp.float32)
    full = np.asarray(net(x))
    adapt.restrict_head(net, np.array([3, 0]))
    np.testing.assert_allclose(np.asarray(net(x)), full[:, [3, 0]], rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="must index the 2 source classes"):
        adapt.restrict_head(net, np.array([2]))


def test_checkpoint_round_trip_is_bit_exact(tmp_path):
    a, b = _Net(nnx.Rngs(0)), _Net(nnx.Rngs(1))
    a.bn.mean.value = jnp.arange(8.0)  # batch statistics travel with the params
    checkpoint.save_state(tmp_path / "ck", a)
    checkpoint.restore_state(tmp_path / "ck", b)
    for x, y in zip(nnx.state(a).flat_state(), nnx.state(b).flat_state(), strict=True):
        np.testing.assert_array_equal(np.asarray(x[1].value), np.asarray(y[1].value))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        checkpoint.restore_state(tmp_path / "missing", b)


def test_sparsity_summary_counts_weights_not_masks():
    net = _Net(nnx.Rngs(0))
    mask = np.zeros((6, 8), bool)
    mask[:, :2] = True
    net.fc.kernel.value = net.fc.kernel.value * mask
    s = sparsity_report.summarize(net, {"fc": mask})
    assert s["pruned_layers"] == {"params": 48, "nonzero": 12, "sparsity": 0.75,
                                  "compression": 4.0}
    total = 6 * 8 + 8 + 8 + 8 + 8 * 5 + 5  # fc, fc bias, bn scale+bias, head
    zero_init_biases = 8 + 8 + 5  # fc bias, bn bias, head bias start at zero
    assert s["model"]["params"] == total
    assert s["model"]["nonzero"] == total - 36 - zero_init_biases
