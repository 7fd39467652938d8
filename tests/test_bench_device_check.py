"""The prepared GPU check never rots: its CPU dry run (interpret mode, tiny shapes) end to end."""

import json
import pathlib
import subprocess
import sys

import numpy as np

from taco_jax.bench import device_check

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_dry_run_end_to_end(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "taco_jax.bench.device_check", "--dry_run",
                           f"--out={out}", "--deadline_s=300"], cwd=ROOT, capture_output=True,
                          text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == [
        "device_check.json", "device_check.log", "measured.json", "summary.txt"]
    report = json.loads((out / "device_check.json").read_text())
    assert list(report["stages"]) == [s.name for s in device_check.STAGES]
    bad = {name: [r for r in st["items"] if r["status"] != "ok"]
           for name, st in report["stages"].items()}
    assert not any(bad.values()), bad
    check = {r["item"]: r for r in report["stages"]["correctness"]["items"]}
    assert all(r["max_rel_err"] <= r["tolerance"] for r in check.values())
    assert report["stages"]["end_to_end"]["items"][0]["results"]["sparse"]["median_ms"] > 0
    measured = json.loads((out / "measured.json").read_text())
    assert measured["device_kind"] == "cpu" and set(measured["break_even"]) == {
        "linear", "mlp", "gpu_path"}
    assert measured["tiles"], "the autotune stage recorded no tiles"
    summary = done.stdout.strip().splitlines()
    assert summary[-1].startswith("# wrote") and "DRY RUN" in (out / "summary.txt").read_text()


def test_a_crashing_item_loses_only_itself(tmp_path, monkeypatch):
    """A worker that dies mid-item (as a Triton/Mosaic crash would) is restarted on the rest."""
    calls = []

    class FakePopen:
        def __init__(self, cmd, **kw):
            items = next(a for a in cmd if a.startswith("--items=")).split("=", 1)[1].split(",")
            calls.append(items)
            results = next(a for a in cmd if a.startswith("--results=")).split("=", 1)[1]
            self.pid = 0
            with open(results, "a") as f:
                for item in items:
                    f.write(json.dumps({"item": item, "started": True}) + "\n")
                    if item == "b":  # dies here
                        self.returncode = -11
                        return
                    f.write(json.dumps({"item": item, "status": "ok"}) + "\n")
            self.returncode = 0

        def wait(self, timeout=None):
            return self.returncode

    monkeypatch.setattr(device_check.subprocess, "Popen", FakePopen)
    stage = device_check.Stage("fake", lambda s: ["a", "b", "c"], lambda i: {}, 60)
    with open(tmp_path / "log", "w") as log:
        rec = device_check.run_stage(stage, ["a", "b", "c"], [], float("inf"), log, tmp_path)
    assert calls == [["a", "b", "c"], ["c"]]
    assert [(r["item"], r["status"]) for r in rec["items"]] == [
        ("a", "ok"), ("b", "crashed"), ("c", "ok")]
    assert rec["status"] == "incomplete" and "exited with -11" in rec["items"][1]["error"]


def test_torch_anchor_uses_the_square_stage_matrices():
    """The anchor's host arrays are make_linear_problem's, bit for bit (same seed, same mask)."""
    import jax.numpy as jnp

    from taco_jax.kernels.problems import linear_problem_arrays, make_linear_problem

    p = make_linear_problem(24, 64, 32, (16, 16), 0.5, jnp.float32, seed=0)
    x, w, bias, _ = linear_problem_arrays(24, 64, 32, (16, 16), 0.5, np.float32, seed=0)
    np.testing.assert_array_equal(np.asarray(p.w_dense), w)
    np.testing.assert_array_equal(np.asarray(p.x), x)
    np.testing.assert_array_equal(np.asarray(p.bias), bias)
