"""Deployable files of a specialist: ONNX (jax2onnx, run in onnxruntime) and safetensors, each
checked against JAX's logits before it is kept; the launcher on a small finished workdir."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from taco_jax import models
from taco_jax.export import onnx as onnx_export
from taco_jax.export import safetensors as st_export
from taco_jax.export import specialist
from taco_jax.models import resnet
from taco_jax.models.preprocess import PRESETS
from taco_jax.run import export as run_export

ROOT = Path(__file__).resolve().parents[1]
TIGHT = 1e-5  # measured 1e-7..1e-6 (float32 summation order); a wrong op is ~1e-2 or worse


def _randomized(model: nnx.Module, seed: int = 0) -> nnx.Module:
    """Vectors (norm scales, layer scales, biases, BatchNorm statistics) drawn at random:
    zero-initialised BN scales and ConvNeXt's 1e-6 layer scales would hide whole blocks."""
    rng = np.random.default_rng(seed)
    state = nnx.state(model, (nnx.Param, nnx.BatchStat))
    for path, v in nnx.to_flat_state(state):
        a = np.asarray(v.get_value())
        if a.ndim > 1:
            continue
        if path[-1] in ("scale", "gamma", "var"):
            new = rng.uniform(0.5, 1.5, a.shape)
        else:
            new = rng.normal(0.0, 0.1, a.shape)
        v.set_value(jnp.asarray(new, a.dtype))
    nnx.update(model, state)
    return model


def _small_resnet(stem=resnet.ResNet) -> nnx.Module:
    """A two-stage, 8/16-wide ResNet-18 layout with the ImageNet stem (7×7/2 conv, 3×3/2
    max-pool), at 32×32."""
    return stem(resnet.BasicBlock, (1, 1), num_classes=5, widths=(8, 16), stem="imagenet",
                preprocess=PRESETS["torchvision"].at_size(32), rngs=nnx.Rngs(0))


def _images(model: nnx.Module, batch: int, seed: int = 0) -> np.ndarray:
    p = model.preprocess
    return np.random.default_rng(seed).standard_normal(
        (batch, p.input_size, p.input_size, len(p.mean)), np.float32)


MODELS = {
    "resnet": _small_resnet,
    "vit": lambda: models.create("vit_tiny_patch16_224", num_classes=5, img_size=32,
                                 embed_dim=32, depth=2, num_heads=2),
    "deit_distilled": lambda: models.create("deit_tiny_distilled_patch16_224", num_classes=5,
                                            img_size=32, embed_dim=32, depth=1, num_heads=2),
    "convnext": lambda: models.create("convnext_tiny", num_classes=5, img_size=32,
                                      depths=(1, 1, 1, 1), dims=(16, 32, 64, 128)),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_onnx_logits_match_jax_at_any_batch(name, tmp_path):
    model = _randomized(MODELS[name]())
    x = _images(model, 4)
    out = onnx_export.export_onnx(model, tmp_path / "m.onnx", x)
    assert out["parity_max_rel_error"] < TIGHT and out["opset"] >= 18
    assert out["bytes"] == (tmp_path / "m.onnx").stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no temporary left
    call = onnx_export.session_call(tmp_path / "m.onnx")
    x3 = _images(model, 3, seed=1)  # a batch size the export never saw
    want = onnx_export.jax_logits(model, x3)
    assert onnx_export.relative_error(call(x3), want) < TIGHT


def test_pruned_zeros_stay_exactly_zero(tmp_path):
    model = _randomized(MODELS["vit"]())
    state = nnx.state(model, nnx.Param)
    rng = np.random.default_rng(0)
    for _, v in nnx.to_flat_state(state):
        a = np.asarray(v.get_value())
        if a.ndim in (2, 4):
            v.set_value(jnp.asarray(np.where(rng.random(a.shape) < 0.5, 0.0, a), a.dtype))
    nnx.update(model, state)
    zeros = onnx_export.kernel_zeros(model)
    out = onnx_export.export_onnx(model, tmp_path / "pruned.onnx", _images(model, 2))
    assert zeros > 5000 and out["zeros_checked"] == zeros <= out["zeros_in_file"]
    assert out["parity_max_rel_error"] < TIGHT


def test_zeros_lost_in_the_file_fail_and_leave_nothing(tmp_path, monkeypatch):
    """An exporter that stores pruned weights as tiny non-zeros: the logits still match, the
    zeros check refuses the file."""
    model = _randomized(MODELS["vit"]())
    convert = onnx_export._convert

    def tiny_instead_of_zero(*args):
        from onnx import numpy_helper

        proto = convert(*args)
        for init in proto.graph.initializer:
            a = numpy_helper.to_array(init)
            if a.ndim == 2 and a.dtype == np.float32:
                init.CopyFrom(numpy_helper.from_array(np.where(a == 0, 1e-30, a), init.name))
        return proto

    monkeypatch.setattr(onnx_export, "_convert", tiny_instead_of_zero)
    state = nnx.state(model, nnx.Param)
    for _, v in nnx.to_flat_state(state):
        if np.ndim(v.get_value()) == 2:
            v.set_value(v.get_value().at[::2].set(0.0))
    nnx.update(model, state)
    with pytest.raises(ValueError, match=r"^ONNX zeros check failed: .* hold \d+ exact zeros, "
                                         r"the model's \d+") as e:
        onnx_export.export_onnx(model, tmp_path / "m.onnx", _images(model, 2))
    assert "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []


class _PaddedPoolResNet(resnet.ResNet):
    """The stem's pool as ``nnx.max_pool`` with an explicit padding pair: the same function in
    JAX, but jax2onnx 0.17 exports it as a 'VALID' pool without any error."""

    def stem(self, x):
        x = jax.nn.relu(self.bn1(self.conv1(x)))
        return nnx.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


def test_wrong_export_fails_parity_and_leaves_nothing(tmp_path):
    model = _randomized(_small_resnet(_PaddedPoolResNet))
    x = _images(model, 4)
    reference = _randomized(_small_resnet())
    np.testing.assert_array_equal(onnx_export.jax_logits(model, x),
                                  onnx_export.jax_logits(reference, x))  # the same in JAX
    target = tmp_path / "out" / "m.onnx"
    with pytest.raises(ValueError, match=r"^ONNX parity check failed: onnxruntime logits differ "
                                         r"from JAX's by .* tolerance 0.0001$"):
        onnx_export.export_onnx(model, target, x)
    assert list((tmp_path / "out").iterdir()) == []
    with pytest.raises(ValueError, match=r"tolerance 0$"):  # no export is exact to the last bit
        onnx_export.export_onnx(reference, target, x, rtol=0.0)
    assert list((tmp_path / "out").iterdir()) == []


def test_latency_and_bad_arguments(tmp_path):
    model = MODELS["resnet"]()
    x = _images(model, 2)
    onnx_export.export_onnx(model, tmp_path / "m.onnx", x)
    t = onnx_export.onnxruntime_latency(tmp_path / "m.onnx", x, repeats=3, warmup=1)
    assert t["batch"] == 2 and len(t["times"]) == 3 and t["min"] <= t["median"] <= t["max"]
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        onnx_export.onnxruntime_latency(tmp_path / "m.onnx", x, repeats=0)
    with pytest.raises(ValueError, match="opset=13; expected >= 18"):
        onnx_export.export_onnx(model, tmp_path / "n.onnx", x, opset=13)
    with pytest.raises(ValueError, match=r"sample has shape \(32, 32, 3\)"):
        onnx_export.export_onnx(model, tmp_path / "n.onnx", x[0])
    with pytest.raises(ImportError, match=r"pip install 'taco-jax\[onnx\]'"):
        onnx_export._require("taco_jax_no_such_module")


def test_importing_the_package_needs_no_onnx():
    code = ("import sys, taco_jax, taco_jax.export.onnx, taco_jax.run.export; "
            "print(sorted({'jax2onnx', 'onnx', 'onnxruntime'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr[-2000:]


RECORD = {"format": 1, "arch": "resnet_mini", "num_classes": 3,
          "overrides": {"widths": [8, 8, 16], "layers": [1, 1, 1]},
          "labels": ["cat", "cow", "sheep"], "source": {"run": "test"}}


def _mini() -> nnx.Module:
    return _randomized(models.create("resnet_mini", num_classes=3, **RECORD["overrides"]))


def test_safetensors_round_trip_rebuilds_the_logits(tmp_path):
    model = _mini()
    record = {**RECORD, "preprocess": model.preprocess.to_dict()}
    record = json.loads(json.dumps(record))  # as read from model.json
    out = st_export.export_safetensors(model, tmp_path / "m.safetensors", record)
    rebuilt, back = st_export.load_safetensors(tmp_path / "m.safetensors")
    assert back == record and rebuilt.preprocess == model.preprocess
    x = _images(model, 4)
    np.testing.assert_array_equal(onnx_export.jax_logits(rebuilt, x),
                                  onnx_export.jax_logits(model, x))
    assert out["tensors"] == len(nnx.to_flat_state(nnx.state(model, (nnx.Param,
                                                                     nnx.BatchStat))))
    safetensors_numpy = pytest.importorskip("safetensors.numpy")  # the reference reader agrees
    tensors = safetensors_numpy.load_file(tmp_path / "m.safetensors")
    np.testing.assert_array_equal(tensors["conv1.kernel"], np.asarray(model.conv1.kernel[...]))
    wrong = {**record, "overrides": {"widths": [8, 8, 32], "layers": [1, 1, 1]}}
    st_export.export_safetensors(model, tmp_path / "w.safetensors", wrong)
    with pytest.raises(ValueError, match=r"does not fit resnet_mini .*layer3.0.conv1.kernel "
                                         r"has shape \(3, 3, 8, 16\), the model \(3, 3, 8, 32\)"):
        st_export.load_safetensors(tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match=r"record lacks \['preprocess'\]"):
        st_export.export_safetensors(model, tmp_path / "x.safetensors", RECORD)


@pytest.fixture
def workdir(tmp_path):
    """A finished run's workdir as far as export reads it: specialist/ and config.json (the
    embedded farm task, prepared in the workdir's own data directory)."""
    wd = tmp_path / "run"
    model = _mini()
    specialist.save_specialist(wd / specialist.DIRECTORY, model, "resnet_mini",
                               RECORD["overrides"], RECORD["labels"], RECORD["source"])
    (wd / "tfds").mkdir()
    task = {"dataset": "taco_embedded", "data_dir": str(wd / "tfds"), "classes": RECORD["labels"],
            "subtask": "", "train_split": "train", "test_split": "test", "train_per_class": 0}
    (wd / "config.json").write_text(json.dumps({"task": task}))
    return wd


def test_launcher_exports_checked_on_the_runs_images(workdir):
    out = subprocess.run([sys.executable, "-m", "launch.export", f"--workdir={workdir}",
                          "--format=safetensors", "--batch_size=6"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    path = workdir / "export" / "specialist.safetensors"
    assert f"wrote {path} (" in out.stdout
    assert "max relative error 0 on 6 test images of the run's task" in out.stdout
    model, record = st_export.load_safetensors(path)
    saved, meta = specialist.load_specialist(workdir / "specialist")
    assert record == meta and model.preprocess == saved.preprocess

    # ONNX (in-process: jax2onnx's plugins load once per process, ~7 s).
    r = run_export.export_workdir(workdir, "onnx")
    assert r["path"] == str(workdir / "export" / "specialist.onnx")
    assert r["sample"] == "8 test images of the run's task"
    assert r["parity_max_rel_error"] < TIGHT
    import onnx

    meta = {p.key: p.value for p in onnx.load(r["path"]).metadata_props}
    assert json.loads(meta["model.json"])["labels"] == RECORD["labels"]
    (workdir / "config.json").unlink()  # the task unknown: random inputs
    r = run_export.export_workdir(workdir, "onnx", workdir / "b.onnx", batch_size=2)
    assert r["sample"] == "2 random inputs" and r["parity_max_rel_error"] < TIGHT


def test_launcher_failure_is_one_line_and_writes_nothing(tmp_path):
    out = subprocess.run([sys.executable, "-m", "launch.export", f"--workdir={tmp_path}",
                          "--format=safetensors"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert f"{tmp_path} holds no specialist/" in out.stderr
    assert list(tmp_path.iterdir()) == []
    help_text = subprocess.run([sys.executable, "-m", "launch.export", "--helpshort"], cwd=ROOT,
                               capture_output=True, text=True, timeout=120).stdout
    for flag in ("--workdir", "--format", "--out", "--batch_size"):
        assert flag in help_text
