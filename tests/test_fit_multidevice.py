"""Data-parallel training: ``fit`` over 4 forced CPU devices trains as on one device.

The reference is the same ``fit`` on one device, the whole batch in one pass (and for the
micro-batch case, the same micro-batches). The runs differ only in the order of float32 sums
(gradients and BatchNorm statistics reduced over devices), so after 4 AdamW steps every
weight's change from the start agrees to 1e-3 of the change itself; a real bug (a device
training on its shard alone, BatchNorm statistics of a quarter batch, the gradient of one
shard) moves the weights by a sizeable part of their change. Run in a subprocess: forced host
devices must be set before JAX starts.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from taco_jax.train import fit

SCRIPT = textwrap.dedent("""
    import jax, numpy as np
    from flax import nnx
    from taco_jax import distributed
    from taco_jax.models import registry
    from taco_jax.train import fit

    assert len(jax.devices()) == 4, jax.devices()
    mesh = distributed.device_mesh()
    assert fit.data_devices(mesh, 6).devices.size == 3  # the most devices that divide 6 rows
    assert fit.data_devices(mesh, 7) is None

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 28, 28, 1), dtype=np.uint8)
    labels = rng.integers(0, 5, 40)
    teacher = registry.create("resnet_mini", num_classes=5, rngs=nnx.Rngs(1))
    teacher.eval()

    def preprocess(x):
        return x.astype(np.float32) / 255.0

    def flat(model, kind):
        return np.concatenate([np.ravel(np.asarray(a))
                               for a in jax.tree.leaves(nnx.state(model, kind))])

    for microbatch in (0, 8):
        config = fit.FitConfig(steps=4, batch_size=16, learning_rate=1e-2, kd_weight=1.0,
                               microbatch=microbatch, log_every=1)
        start = registry.create("resnet_mini", num_classes=5, rngs=nnx.Rngs(0))
        one, many = nnx.clone(start), nnx.clone(start)
        h1 = fit.fit(one, images, labels, config, preprocess, teacher=teacher)
        hm = fit.fit(many, images, labels, config, preprocess, teacher=teacher, mesh=mesh)
        assert [h["devices"] for h in h1] == [1] * 4, h1
        assert [h["devices"] for h in hm] == [4] * 4, hm
        np.testing.assert_allclose([h["loss"] for h in hm], [h["loss"] for h in h1], rtol=1e-4)
        for kind in (nnx.Param, nnx.BatchStat):
            w0, w1, wm = flat(start, kind), flat(one, kind), flat(many, kind)
            change = np.linalg.norm(w1 - w0)
            assert change > 1e-3, (kind, change)
            off = np.linalg.norm(wm - w1) / change
            assert off < 1e-3, (microbatch, kind, off)
        # the trained model is back on the one device it started on
        homes = {a.sharding.device_set.pop() if len(a.sharding.device_set) == 1 else None
                 for a in jax.tree.leaves(nnx.state(many))}
        assert homes == {jax.devices()[0]}, homes
    print("FIT MULTIDEVICE OK")
""")


def test_fit_over_four_devices_equals_one_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=Path(__file__).parent, env=env,
                         text=True, capture_output=True, timeout=900)
    assert "FIT MULTIDEVICE OK" in out.stdout, out.stdout[-3000:] + out.stderr[-6000:]


def test_one_device_is_not_split():
    """No mesh, or a mesh of one process's single device: the one-device path."""
    assert fit.data_devices(None, 64) is None
