"""Multi-device: 8 forced CPU devices (in a subprocess, set before JAX starts) equal one device."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent("""
    import jax, numpy as np
    from flax import nnx
    from jax.sharding import Mesh
    from test_prune_fixtures import TinyViT, image_batches
    from test_prune_solver import correlated_layer
    from taco_jax.models.paths import get_layer
    from taco_jax.prune.hessian import collect_hessians
    from taco_jax.prune.sequential import PruneConfig, prune_model
    from taco_jax.prune.solver import prune_layer

    assert len(jax.devices()) == 8, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("rows",))
    W, H = correlated_layer(64, 96, n=512, seed=7)
    import sys
    full = sys.argv[1] == "full"
    pats = ["unstructured", "unstructured-row", "2:4", "block8x8", "structured4"]
    for pat in pats if full else ["unstructured", "block8x8", "structured4"]:
        for method in ["sparsegpt", "admm", "magnitude"] if full else ["sparsegpt"]:
            one = prune_layer(W, H, pat, 0.6, blocksize=32, method=method)
            many = prune_layer(W, H, pat, 0.6, blocksize=32, method=method, mesh=mesh)
            assert len(many[0].sharding.device_set) == 8, (pat, many[0].sharding)
            np.testing.assert_array_equal(np.asarray(one[1]), np.asarray(many[1]), err_msg=pat)
            np.testing.assert_allclose(np.asarray(one[0]), np.asarray(many[0]), rtol=1e-5,
                                       atol=1e-5, err_msg=pat)
            np.testing.assert_allclose(float(one[2].rel_error), float(many[2].rel_error),
                                       rtol=1e-4)
    xs = image_batches(2)
    names = ["patch", "blocks.0.attn.qkv", "blocks.1.mlp.fc2"]
    Hs1 = collect_hessians(TinyViT(nnx.Rngs(0)), xs, names)
    Hs8 = collect_hessians(TinyViT(nnx.Rngs(0)), xs, names, mesh=mesh)
    for n in names:
        np.testing.assert_allclose(np.asarray(Hs1[n]), np.asarray(Hs8[n]), rtol=1e-4, atol=1e-5)
    from taco_jax.prune.hessian import collect_paired
    m, r = TinyViT(nnx.Rngs(0)), TinyViT(nnx.Rngs(1))  # dense targets' paired sums
    one = collect_paired(m, xs, r, xs, "blocks.1.mlp.fc2")
    many = collect_paired(m, xs, r, xs, "blocks.1.mlp.fc2", mesh=mesh)
    for u, v in zip(one, many):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-4, atol=1e-5)
    if not full:
        print("MULTIDEVICE OK")
        raise SystemExit
    for targets in ("self", "dense"):
        cfg = PruneConfig(sparsity=0.5, blocksize=32, targets=targets)
        a, b = TinyViT(nnx.Rngs(0)), TinyViT(nnx.Rngs(0))
        ra, rb = prune_model(a, xs, cfg), prune_model(b, xs, cfg, mesh=mesh)
        for n in ra.masks:
            agree = np.mean(ra.masks[n] == rb.masks[n])
            assert agree > 0.999, (n, agree)
            np.testing.assert_allclose(np.asarray(get_layer(a, n).kernel.get_value()),
                                       np.asarray(get_layer(b, n).kernel.get_value()),
                                       rtol=1e-3, atol=1e-4)
    print("MULTIDEVICE OK")
""")


def _run(mode: str) -> None:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")
    tests = Path(__file__).parent
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], cwd=tests, env=env, text=True,
                         capture_output=True, timeout=900)
    assert "MULTIDEVICE OK" in out.stdout, out.stdout[-3000:] + out.stderr[-6000:]


def test_eight_cpu_devices_equal_one():
    """Row-sharded solves (3 patterns) and psum'd Hessians equal the single-device ones."""
    _run("quick")


@pytest.mark.slow
def test_eight_cpu_devices_equal_one_everywhere():
    """Every pattern, magnitude too, and a whole sequential prune_model run."""
    _run("full")
