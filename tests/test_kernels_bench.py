"""Benchmark plumbing: roofline arithmetic, shape list, break-even, one row end to end."""

from __future__ import annotations

import jax.numpy as jnp
import pytest
from absl import flags

from taco_jax.kernels import bench

H100 = bench.Peak(989.0, 494.0, 3.35, "test")


@pytest.fixture(autouse=True, scope="module")
def _flags():
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()  # defaults, without other launchers' required-flag checks


def test_linear_ceiling_by_hand():
    # 4096x4096, 16384 tokens, bf16: dense is compute-bound (0.556 ms); at 10% density the
    # kernel is bound by moving x and y (256 MiB + 3.2 MiB of weights): ceiling ~6.9x.
    d, s, c = bench.linear_ceiling(16384, 4096, 4096, 0.1, 2, H100, jnp.bfloat16)
    assert d == pytest.approx(2 * 16384 * 4096**2 / 989e12)
    assert s == pytest.approx((2 * 16384 * 4096 + 0.1 * 4096**2) * 2 / 3.35e12)
    assert c == pytest.approx(d / s) and 6.7 < c < 7.0
    assert bench.linear_ceiling(512, 512, 512, 1.0, 2, H100, jnp.bfloat16)[2] == 1.0


def test_mlp_ceiling_lifts_unfused_cap():
    # ViT-B fc1 alone at 197*64 tokens is capped near 2x at 90%; the fused MLP is not.
    lin = bench.linear_ceiling(197 * 64, 3072, 768, 0.1, 2, H100, jnp.bfloat16)[2]
    mlp = bench.mlp_ceiling(197 * 64, 768, 3072, 0.1, 2, H100, jnp.bfloat16)[2]
    assert 1.5 < lin < 2.6 and mlp > 5.0


def test_shapes_cover_the_issue():
    names = {s.name for s in bench.shapes(["square", "vit", "resnet"], [8, 64], 32, False)}
    assert "4096x4096" in names and "vit_b.mlp.B64" in names and "vit_b.qkv.B8" in names
    assert {f"r50.l{i}.conv{j}" for i in range(1, 5) for j in (1, 3)} <= names
    vit = next(s for s in bench.shapes(["vit"], [64], 32, False) if s.name == "vit_b.fc1.B64")
    assert (vit.tokens, vit.a, vit.b) == (197 * 64, 3072, 768)


def test_device_peaks():
    assert bench.device_peak("NVIDIA H100 80GB HBM3").bf16_tflops == 989.0
    assert bench.device_peak("NVIDIA H100 PCIe").hbm_tbps == 2.0
    assert bench.device_peak("NVIDIA H200").hbm_tbps == 4.8
    with pytest.raises(Exception, match="no peak figures"):
        bench.device_peak("Imaginary Accelerator")


def test_break_even_from_rows():
    rows = [dict(op="linear", kernel="triton", sparsity_pct=s, speedup=v)
            for s, v in ((0, 0.8), (50, 0.95), (75, 1.4), (90, 2.5))]
    rows += [dict(op="linear", kernel="mosaic_gpu", sparsity_pct=s, speedup=v)
             for s, v in ((0, 0.9), (50, 1.2), (75, 1.9), (90, 3.0))]
    rows += [dict(op="mlp", kernel="triton", sparsity_pct=s, speedup=v)
             for s, v in ((0, 0.7), (50, 1.1), (90, 3.1))]
    be = bench.break_even(rows)
    assert be["linear"] == pytest.approx(0.5, abs=1e-3)  # mosaic_gpu pays from 50% sparsity
    assert be["gpu_path"] == "mosaic_gpu"
    assert be["mlp"] == pytest.approx(0.5, abs=1e-3)


@pytest.mark.parametrize("op", ["linear", "mlp"])
def test_one_row_interpret(op):
    shape = bench.Shape("t", "tiny", op, 20, 64, 128)
    opts = dict(seed=0, warmup=1, repeats=2, inner=1, autotune=False, interpret=True,
                check=True)
    rows = bench.bench_row(shape, 32, 75.0, ["triton"], jnp.float32,
                           bench.device_peak("cpu"), "wall", opts)
    (r,) = rows
    assert "error" not in r, r
    assert r["block_density"] == pytest.approx(0.25, abs=0.02)
    assert r["sparse_ms"] > 0 and r["dense_ms"] > 0 and r["ceiling_speedup"] > 1
    assert r["speedup"] == pytest.approx(r["dense_ms"] / r["sparse_ms"])


@pytest.mark.slow
def test_cli_quick_interpret(tmp_path):
    """The documented CPU command end to end (~1 min)."""
    import json
    import subprocess
    import sys

    out = tmp_path / "q.json"
    subprocess.run([sys.executable, "-m", "taco_jax.kernels.bench", "--interpret", "--quick",
                    f"--json={out}"], check=True, cwd=str(__import__("pathlib").Path(
                        bench.__file__).parents[2]))
    rows = json.loads(out.read_text())["rows"]
    assert rows and not any("error" in r for r in rows)
