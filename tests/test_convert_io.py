"""Checkpoint reading, mismatch reports, position-embedding resizing, orbax round trip, CLI."""

import json
import subprocess
import sys

import numpy as np
import pytest
from absl import app, flags
from absl.testing import flagsaver
from flax import nnx

from taco_jax.convert import (
    CheckpointMismatchError,
    convert_state_dict,
    load_checkpoint,
    load_state_dict,
    read_meta,
    read_safetensors,
    resize_pos_embed,
    save_checkpoint,
    torch_layout,
)
from taco_jax.models import create


def _random_state_dict(arch: str, num_classes: int = 7, seed: int = 0) -> dict[str, np.ndarray]:
    """A state dict in PyTorch layout with random values, for every tensor ``arch`` needs."""
    rng = np.random.default_rng(seed)
    layout = torch_layout(nnx.eval_shape(lambda: create(arch, num_classes=num_classes)))
    return {k: rng.standard_normal(s.torch_shape).astype(np.float32) for k, s in layout.items()}


def _weights(model):
    return nnx.to_flat_state(nnx.state(model, (nnx.Param, nnx.BatchStat)))


def test_safetensors_reader_matches_the_reference_writer(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    tensors = {"a": np.arange(12, dtype=np.float32).reshape(3, 4),
               "b.half": np.linspace(-2, 2, 5).astype(np.float16),
               "c": np.array([[1, -2]], dtype=np.int64), "empty": np.zeros((0, 3), np.float32)}
    st.save_file(tensors, tmp_path / "x.safetensors", metadata={"format": "pt"})
    out = read_safetensors(tmp_path / "x.safetensors")
    assert out.keys() == tensors.keys()
    for k, v in tensors.items():
        assert out[k].dtype == v.dtype and np.array_equal(out[k], v)


def test_safetensors_bfloat16(tmp_path):
    torch = pytest.importorskip("torch")
    st = pytest.importorskip("safetensors.torch")
    t = torch.randn(4, 5).to(torch.bfloat16)
    st.save_file({"w": t}, tmp_path / "bf16.safetensors")
    out = read_safetensors(tmp_path / "bf16.safetensors")["w"]
    np.testing.assert_array_equal(out.astype(np.float32), t.float().numpy())


def test_corrupt_safetensors_is_rejected(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes((10**9).to_bytes(8, "little") + b"{}")
    with pytest.raises(ValueError, match="header length"):
        read_safetensors(bad)


def test_torch_checkpoint_with_wrappers(tmp_path):
    torch = pytest.importorskip("torch")
    sd = {"module.w": torch.randn(3, 2).to(torch.bfloat16), "module.b": torch.zeros(2)}
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "ckpt.pth")
    out = load_state_dict(tmp_path / "ckpt.pth")
    assert set(out) == {"w", "b"}
    np.testing.assert_array_equal(out["w"], sd["module.w"].float().numpy())


def test_unknown_suffix_and_missing_file(tmp_path):
    (tmp_path / "w.ckpt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"unknown suffix '.ckpt'"):
        load_state_dict(tmp_path / "w.ckpt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_state_dict(tmp_path / "nope.safetensors")


def test_mismatch_lists_every_offending_tensor():
    sd = _random_state_dict("vit_mini")
    del sd["blocks.1.mlp.fc1.bias"]
    sd["blocks.9.attn.qkv.weight"] = np.zeros((3, 3), np.float32)
    sd["blocks.0.attn.qkv.weight"] = np.zeros((288, 95), np.float32)
    with pytest.raises(CheckpointMismatchError) as err:
        convert_state_dict(sd, "vit_mini")
    assert sorted(err.value.problems) == [
        "missing: blocks.1.mlp.fc1.bias expected [384]",
        "unexpected: blocks.9.attn.qkv.weight found [3, 3]",
        "wrong shape: blocks.0.attn.qkv.weight expected [288, 96] found [288, 95]",
    ]


def test_hugging_face_mismatch_names_the_source_tensors():
    sd = _random_state_dict("vit_mini")
    del sd["blocks.0.attn.qkv.weight"]
    hf = {f"vit.layers.0.attention.{x}_proj.weight": np.zeros((95, 96), np.float32)
          for x in "qkv"}
    with pytest.raises(CheckpointMismatchError) as err:
        convert_state_dict({**sd, **hf}, "vit_mini", naming="hf")
    assert err.value.problems == [
        "wrong shape: blocks.0.attn.qkv.weight (from vit.layers.0.attention.q_proj.weight + "
        "vit.layers.0.attention.k_proj.weight + vit.layers.0.attention.v_proj.weight) "
        "expected [288, 96] found [285, 96]"]
    hf["vit.layers.0.attention.v_proj.weight"] = np.zeros((96, 95), np.float32)
    with pytest.raises(CheckpointMismatchError) as err:  # parts that cannot be fused
        convert_state_dict({**sd, **hf}, "vit_mini", naming="hf")
    assert sorted(err.value.problems) == [
        "missing: blocks.0.attn.qkv.weight expected [288, 96]",
        "unexpected: blocks.0.attn.k.weight (from vit.layers.0.attention.k_proj.weight) "
        "found [95, 96]",
        "unexpected: blocks.0.attn.q.weight (from vit.layers.0.attention.q_proj.weight) "
        "found [95, 96]",
        "unexpected: blocks.0.attn.v.weight (from vit.layers.0.attention.v_proj.weight) "
        "found [96, 95]"]


def test_checkpoint_without_classifier_gets_a_zero_head():
    sd = _random_state_dict("deit_tiny_distilled_patch16_224")
    backbone = {k: v for k, v in sd.items() if not k.startswith("head")}
    with pytest.raises(CheckpointMismatchError, match="give num_classes"):
        convert_state_dict(backbone, "deit_tiny_distilled_patch16_224")
    model, spec = convert_state_dict(backbone, "deit_tiny_distilled_patch16_224", num_classes=5)
    assert spec.num_classes == 5
    for head in (model.head, model.head_dist):
        assert head.kernel.value.shape == (192, 5) and not np.any(head.kernel.value)
    np.testing.assert_array_equal(model.pos_embed.value, sd["pos_embed"])
    with pytest.raises(ValueError, match=r"head.weight has 7 classes but num_classes=5"):
        convert_state_dict(sd, "deit_tiny_distilled_patch16_224", num_classes=5)


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match=r"unknown arch 'vit_huge'.*resnet18"):
        convert_state_dict({}, "vit_huge")
    names = "auto, timm, hf, augreg, torchvision"
    with pytest.raises(ValueError, match=rf"naming must be one of {names}, got 'tf'"):
        convert_state_dict({}, "vit_mini", naming="tf")


@pytest.mark.parametrize(("n_in", "n_out"), [(14, 24), (14, 7), (7, 10), (5, 5), (24, 14)])
def test_pos_embed_resize_matches_torch_antialiased_bicubic(n_in, n_out):
    torch = pytest.importorskip("torch")
    pe = np.random.default_rng(0).standard_normal((1, 1 + n_in * n_in, 8)).astype(np.float32)
    grid = torch.from_numpy(pe[:, 1:]).reshape(1, n_in, n_in, 8).permute(0, 3, 1, 2)
    ref = torch.nn.functional.interpolate(grid.double(), size=(n_out, n_out), mode="bicubic",
                                          antialias=True, align_corners=False)
    ref = ref.permute(0, 2, 3, 1).reshape(1, -1, 8).float().numpy()
    out = resize_pos_embed(pe, 1, (n_out, n_out))
    np.testing.assert_array_equal(out[:, :1], pe[:, :1])
    np.testing.assert_allclose(out[:, 1:], ref, atol=1e-6)


def test_checkpoint_round_trip_is_bit_exact(tmp_path):
    model, spec = convert_state_dict(_random_state_dict("resnet_mini"), "resnet_mini")
    save_checkpoint(model, spec, tmp_path / "ckpt")
    back, spec_back = load_checkpoint(tmp_path / "ckpt")
    assert spec_back == spec and back.preprocess == model.preprocess
    for (pa, a), (pb, b) in zip(_weights(model), _weights(back), strict=True):
        assert pa == pb and a.value.dtype == b.value.dtype
        assert np.array_equal(a.value, b.value)
    with pytest.raises(FileExistsError, match="already exists"):
        save_checkpoint(model, spec, tmp_path / "ckpt")


@pytest.fixture
def cli():
    """The absl app's main, with flags parsed in-process (and restored afterwards)."""
    from launch import convert as launcher

    def run(*args: str) -> None:
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["convert", *args])
        launcher.main(["convert"])

    with flagsaver.flagsaver():
        yield run
    flags.FLAGS.unparse_flags()


def test_cli_writes_an_orbax_checkpoint_that_loads_back_exactly(tmp_path, cli):
    st = pytest.importorskip("safetensors.numpy")
    sd = _random_state_dict("vit_mini", num_classes=4)
    st.save_file(sd, tmp_path / "w.safetensors")
    cli(f"--src={tmp_path / 'w.safetensors'}", "--arch=vit_mini", f"--out={tmp_path / 'out'}",
        "--preprocess=augreg")
    model, spec = load_checkpoint(tmp_path / "out")
    direct, _ = convert_state_dict(sd, "vit_mini")
    for (pa, a), (pb, b) in zip(_weights(model), _weights(direct), strict=True):
        assert pa == pb and np.array_equal(a.value, b.value)
    meta = json.loads((tmp_path / "out" / "model.json").read_text())
    assert meta["arch"] == "vit_mini" and meta["num_classes"] == 4 == spec.num_classes
    assert meta["preprocess"]["mean"] == [0.5, 0.5, 0.5]  # augreg preset, sized to 28
    assert meta["preprocess"]["input_size"] == 28


def test_cli_failure_writes_nothing(tmp_path, cli):
    st = pytest.importorskip("safetensors.numpy")
    sd = _random_state_dict("vit_mini")
    del sd["head.bias"]
    st.save_file(sd, tmp_path / "w.safetensors")
    with pytest.raises(CheckpointMismatchError, match=r"missing: head.bias expected \[7\]"):
        cli(f"--src={tmp_path / 'w.safetensors'}", "--arch=vit_mini",
            f"--out={tmp_path / 'out'}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]


def test_cli_rejects_bad_flags_before_any_work(tmp_path):
    (tmp_path / "w.safetensors").write_bytes(b"")
    res = subprocess.run([sys.executable, "-m", "launch.convert",
                          f"--src={tmp_path / 'w.safetensors'}", "--arch=vit_huge",
                          f"--out={tmp_path / 'out'}"], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode != 0
    assert "--arch=vit_huge" in res.stderr and "vit_mini" in res.stderr
    assert not (tmp_path / "out").exists()


def test_cli_stores_labels_from_a_file_or_imagenet1k(tmp_path, cli):
    st = pytest.importorskip("safetensors.numpy")
    st.save_file(_random_state_dict("vit_mini", num_classes=3), tmp_path / "w.safetensors")
    (tmp_path / "labels.txt").write_text("ash\n\nbirch\ncedar\n")
    cli(f"--src={tmp_path / 'w.safetensors'}", "--arch=vit_mini", f"--out={tmp_path / 'out'}",
        f"--labels={tmp_path / 'labels.txt'}")
    assert read_meta(tmp_path / "out")["labels"] == ["ash", "birch", "cedar"]
    with pytest.raises(app.UsageError, match="has 1000 names; the checkpoint's classifier has 3"):
        cli(f"--src={tmp_path / 'w.safetensors'}", "--arch=vit_mini",
            f"--out={tmp_path / 'out2'}", "--labels=imagenet1k")
    assert not (tmp_path / "out2").exists()


def test_cli_takes_the_recipe_and_labels_from_timm_metadata_and_checks_parity(
        tmp_path, cli, capsys):
    """A timm hub download (model.safetensors + config.json): its own recipe, a 384 px input
    kept at 384, its label names, and the logits checked against timm's model."""
    st = pytest.importorskip("safetensors.torch")
    from torchvision_standin import import_timm

    try:
        timm = import_timm()
    except ImportError:
        pytest.skip("timm is not installed (pip install --no-deps timm)")
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3,
                            img_size=64)
    st.save_file({k: v.contiguous() for k, v in ref.state_dict().items()},
                 tmp_path / "model.safetensors")
    cfg = {"input_size": [3, 64, 64], "crop_pct": 0.95, "interpolation": "bicubic",
           "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "crop_mode": "center"}
    (tmp_path / "config.json").write_text(json.dumps(
        {"architecture": "vit_tiny_patch16_224", "num_classes": 3, "pretrained_cfg": cfg,
         "label_names": ["ash", "birch", "cedar"]}))
    cli(f"--src={tmp_path / 'model.safetensors'}", "--arch=vit_tiny_patch16_224",
        f"--out={tmp_path / 'out'}")
    meta = read_meta(tmp_path / "out")
    assert meta["labels"] == ["ash", "birch", "cedar"]
    assert meta["overrides"] == {"img_size": 64}  # the checkpoint's size, not the arch's 224
    assert meta["preprocess"] == {"input_size": 64, "resize_size": 67, "interpolation": "bicubic",
                                  "mean": [0.5] * 3, "std": [0.5] * 3, "resize_mode": "shorter"}
    out = capsys.readouterr().out
    assert f"eval recipe from {tmp_path / 'config.json'}" in out
    diff = float(out.split("max |logit difference| ")[1].split()[0])
    assert diff < 1e-4, out


def test_foreign_layouts_are_named_in_one_line():
    swin = {"layers.0.blocks.0.attn.relative_position_bias_table": np.zeros((169, 3)),
            "head.fc.weight": np.zeros((2, 8))}
    with pytest.raises(CheckpointMismatchError, match="Swin Transformer") as e:
        convert_state_dict(swin, "vit_mini")
    assert len(e.value.problems) == 1  # not one line per missing tensor


def test_training_checkpoint_gives_ema_weights_unless_asked(tmp_path):
    torch = pytest.importorskip("torch")
    raw, ema = {"w": torch.zeros(2)}, {"w": torch.ones(2)}
    torch.save({"state_dict": raw, "state_dict_ema": ema, "epoch": 3}, tmp_path / "c.pth")
    np.testing.assert_array_equal(load_state_dict(tmp_path / "c.pth")["w"], [1, 1])
    np.testing.assert_array_equal(load_state_dict(tmp_path / "c.pth", ema=False)["w"], [0, 0])
