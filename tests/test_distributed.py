"""Distributed runs (``taco_jax.distributed``) give the single-device result.

Masks must be equal exactly. Weights within rtol 1e-4 / atol 1e-5: the Hessian is the same sum
taken in another order (per-device and per-process partial sums, then psum), so it differs in
the last float32 bits (measured: up to 5e-7 absolute, entries of order 1e-2..1); the solve
carries that through a Cholesky inverse of the damped H, and the measured weight differences
are below 3e-6 (weights of order 0.1). A real bug is orders of magnitude away: a missing psum
leaves 1/8 of the calibration columns in H (an O(1) relative change of H, other masks), a
solve on the wrong rows moves weights by their own size. Hessians are compared directly
(rtol 1e-3) too, since a mis-scaled H would leave the (scale-invariant) solve unchanged.

Each run is a subprocess (``distributed_worker.py``): forced host devices must be set before
JAX starts, and ``jax.distributed`` needs one process per rank.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from taco_jax import distributed

TESTS = Path(__file__).parent


def _env(devices: int, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    return dict(env, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
                JAX_PLATFORMS="cpu", **extra)


def _start(out, mode, devices=1, *args, processes=1) -> dict:
    """Start the worker in ``processes`` processes of ``devices`` CPU devices each."""
    cmd = [sys.executable, "distributed_worker.py", str(out), mode, *args]
    env = [_env(devices)]
    if processes > 1:
        with socket.socket() as s:
            s.bind(("localhost", 0))
            port = s.getsockname()[1]
        env = [_env(devices, JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
                    JAX_NUM_PROCESSES=str(processes), JAX_PROCESS_ID=str(i))
               for i in range(processes)]
    return {"out": out, "procs": [subprocess.Popen(cmd, cwd=TESTS, env=e, text=True,
                                                   stdout=subprocess.PIPE,
                                                   stderr=subprocess.STDOUT) for e in env]}


def _wait(run: dict) -> dict:
    """Exit codes, the tail of the logs, and the npz written by process 0 (None if none)."""
    logs = [p.communicate(timeout=900)[0] for p in run["procs"]]
    out = run["out"]
    return {"codes": [p.returncode for p in run["procs"]],
            "log": "\n".join(log[-4000:] for log in logs),
            "npz": dict(np.load(out)) if out.exists() else None}


def _worker(*args, **kw) -> dict:
    return _wait(_start(*args, **kw))


def _assert_same(want: dict, got: dict) -> None:
    keys = [k for k in want if "/" in k]
    assert keys and sorted(keys) == sorted(k for k in got if "/" in k)
    for k in keys:
        if k.endswith("/logits/mesh"):  # data-parallel evaluation vs one device, same model
            np.testing.assert_allclose(got[k], got[k.replace("mesh", "local")], rtol=1e-5,
                                       atol=1e-5, err_msg=k)
        if "/mask/" in k:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
        elif k.startswith("hessian/"):
            np.testing.assert_allclose(got[k], want[k], rtol=1e-3, atol=1e-6, err_msg=k)
        else:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-5, err_msg=k)


def test_process_shards_tile_the_range():
    for n in [0, 1, 7, 8, 100, 101]:
        for count in [1, 2, 3, 8]:
            got = np.concatenate([np.arange(n)[distributed.process_shard(n, i, count)]
                                  for i in range(count)])
            np.testing.assert_array_equal(got, np.arange(n))  # no duplicates, no gaps
            sizes = [len(range(n)[distributed.process_shard(n, i, count)])
                     for i in range(count)]
            assert max(sizes) - min(sizes) <= 1
    with pytest.raises(ValueError, match="process index 2"):
        distributed.process_shard(10, 2, 2)


def test_multiprocess_environment_detection(monkeypatch):
    for k in ["JAX_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES", "SLURM_NTASKS",
              "OMPI_COMM_WORLD_SIZE"]:
        monkeypatch.delenv(k, raising=False)
    assert not distributed.multiprocess_env()
    assert not distributed.initialize("auto")  # nothing to start: single process
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "t1v-0")  # a single-host TPU VM
    assert not distributed.multiprocess_env()
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "t1v-0,t1v-1")
    assert distributed.multiprocess_env()
    assert not distributed.initialize("off")
    monkeypatch.delenv("TPU_WORKER_HOSTNAMES")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert distributed.multiprocess_env()
    with pytest.raises(ValueError, match="'yes'"):
        distributed.initialize("yes")


def test_single_process_helpers_are_identities():
    x = np.arange(12.0).reshape(4, 3)
    assert distributed.device_mesh() is None or distributed.device_mesh().devices.size > 1
    np.testing.assert_array_equal(distributed.gather_rows(x, 4), x)
    assert distributed.sum_over_processes({"a": x})["a"] is x
    assert distributed.is_main()


def test_eight_devices_equal_one_device(tmp_path):
    """Hessians psum'd over 8 devices, a 3-layer group solved across devices, the other layers
    row-sharded: the same masks and weights as one device."""
    runs = [_start(tmp_path / "one.npz", "single", 1, "--models=qkv"),
            _start(tmp_path / "eight.npz", "mesh", 8, "--models=qkv")]
    want, got = map(_wait, runs)
    assert got["npz"] is not None and want["npz"] is not None, want["log"] + got["log"]
    assert int(got["npz"]["devices"]) == 8
    _assert_same(want["npz"], got["npz"])


@pytest.fixture(scope="module")
def single_device_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "one.npz"
    run = _worker(out, "single", 1)
    assert run["npz"] is not None, run["log"]
    return run["npz"]


@pytest.mark.slow
def test_eight_devices_equal_one_device_both_models(single_device_run, tmp_path):
    got = _worker(tmp_path / "eight.npz", "mesh", 8)
    assert got["npz"] is not None, got["log"]
    _assert_same(single_device_run, got["npz"])


@pytest.mark.slow
def test_two_processes_equal_one_device_and_resume_after_kill(single_device_run, tmp_path):
    """2 processes x 4 CPU devices on a localhost coordinator: each process reads half of
    every calibration batch; the same result as one device. Then both processes are killed
    (SIGKILL) after the 3rd layer-group checkpoint and the rerun resumes to the same result."""
    whole = _worker(tmp_path / "two.npz", "mesh", 4, f"--ckpt={tmp_path / 'ckpt_whole'}",
                    processes=2)
    assert whole["codes"] == [0, 0] and whole["npz"] is not None, whole["log"]
    assert (int(whole["npz"]["processes"]), int(whole["npz"]["devices"])) == (2, 8)
    _assert_same(single_device_run, whole["npz"])

    ckpt = f"--ckpt={tmp_path / 'ckpt'}"
    killed = _worker(tmp_path / "killed.npz", "mesh", 4, ckpt, "--kill-after=3", processes=2)
    assert killed["codes"] == [-9, -9] and killed["npz"] is None, killed["log"]
    resumed = _worker(tmp_path / "resumed.npz", "mesh", 4, ckpt, processes=2)
    assert resumed["codes"] == [0, 0], resumed["log"]
    total = int(whole["npz"]["saves"])  # one per layer group (5 + 3 here)
    assert total > 3 and int(resumed["npz"]["saves"]) == total - 3  # it did resume, not start over
    for k, v in whole["npz"].items():
        if "/" in k and not k.startswith("hessian/"):
            np.testing.assert_array_equal(resumed["npz"][k], v, err_msg=k)
