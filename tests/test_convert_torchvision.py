"""torchvision ViT / ConvNeXt state dicts: a small random timm model renamed into torchvision's
layout here (torchvision itself has no CPU wheel), converted with naming auto, and its logits
compared with timm's."""

import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")

from test_convert_parity import TOL, randomize  # noqa: E402

from taco_jax.convert import CheckpointMismatchError, convert_state_dict, torch_layout  # noqa: E402
from taco_jax.convert.convert import foreign_layout  # noqa: E402
from taco_jax.convert.torchvision_names import is_torchvision, torchvision_recipe  # noqa: E402
from taco_jax.models import Preprocess, create  # noqa: E402

VIT = {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 4}
CONVNEXT = {"depths": (1, 1, 2, 1), "dims": (16, 24, 32, 48)}


def _timm():
    from torchvision_standin import import_timm

    try:
        return import_timm()
    except ImportError:
        pytest.skip("timm is not installed (pip install --no-deps timm)")


def _vit_to_torchvision(key: str, legacy_mlp: bool) -> str:
    """timm ViT name → torchvision's (``mlp.linear_1/2`` before torchvision 0.13)."""
    top = {"cls_token": "class_token", "pos_embed": "encoder.pos_embedding"}
    if key in top:
        return top[key]
    head, _, rest = key.partition(".")
    if head == "blocks":
        i, _, rest = rest.partition(".")
        fc = ("linear_1", "linear_2") if legacy_mlp else ("0", "3")
        sub = {"norm1": "ln_1", "norm2": "ln_2", "attn.proj": "self_attention.out_proj",
               "mlp.fc1": f"mlp.{fc[0]}", "mlp.fc2": f"mlp.{fc[1]}"}
        module, _, leaf = rest.rpartition(".")
        if module == "attn.qkv":  # nn.MultiheadAttention's packed [q; k; v] projection
            return f"encoder.layers.encoder_layer_{i}.self_attention.in_proj_{leaf}"
        return f"encoder.layers.encoder_layer_{i}.{sub[module]}.{leaf}"
    module, _, leaf = key.rpartition(".")
    return {"patch_embed.proj": "conv_proj", "norm": "encoder.ln", "head": "heads.head"}[
        module] + f".{leaf}"


def _convnext_to_torchvision(key: str, value: np.ndarray) -> tuple[str, np.ndarray]:
    """timm ConvNeXt name → torchvision's: ``features`` = [stem, stage 0, downsample 1,
    stage 1, ...]; a block's ``layer_scale`` is (C, 1, 1)."""
    parts = key.split(".")
    if parts[0] == "stem":
        return f"features.0.{parts[1]}.{parts[2]}", value
    if parts[0] == "head":
        return f"classifier.{ {'norm': 0, 'fc': 2}[parts[1]] }.{parts[2]}", value
    s = int(parts[1])
    if parts[2] == "downsample":
        return f"features.{2 * s}.{parts[3]}.{parts[4]}", value
    j, module = parts[3], ".".join(parts[4:-1])
    if parts[-1] == "gamma":
        return f"features.{2 * s + 1}.{j}.layer_scale", value.reshape(-1, 1, 1)
    index = {"conv_dw": 0, "norm": 2, "mlp.fc1": 3, "mlp.fc2": 5}[module]
    return f"features.{2 * s + 1}.{j}.block.{index}.{parts[-1]}", value


def _torchvision_vit(legacy_mlp: bool = False):
    _timm()
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    ref = randomize(VisionTransformer(num_classes=10, **VIT))
    sd = {_vit_to_torchvision(k, legacy_mlp): v.numpy() for k, v in ref.state_dict().items()}
    assert len(sd) == len(ref.state_dict())
    return ref, sd


def _torchvision_convnext():
    _timm()
    from timm.models.convnext import ConvNeXt

    torch.manual_seed(0)
    ref = randomize(ConvNeXt(num_classes=10, **CONVNEXT))
    sd = dict(_convnext_to_torchvision(k, v.numpy()) for k, v in ref.state_dict().items())
    assert len(sd) == len(ref.state_dict())
    return ref, sd


def _assert_same_logits(ref, model, img_size: int):
    x = np.random.default_rng(0).standard_normal((2, img_size, img_size, 3), np.float32)
    with torch.no_grad():
        expected = ref(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    got = np.asarray(nnx.jit(lambda m, x: m(x))(model, x))
    assert np.abs(expected).max() > 0.1  # the comparison means something
    np.testing.assert_allclose(got, expected, atol=TOL, rtol=0)


@pytest.mark.parametrize("legacy_mlp", [False, True])
def test_torchvision_vit_gives_timms_logits(legacy_mlp):
    ref, sd = _torchvision_vit(legacy_mlp)
    assert "encoder.layers.encoder_layer_1.self_attention.in_proj_weight" in sd
    assert is_torchvision(sd)
    model, spec = convert_state_dict(sd, "vit_base_patch16_224", **VIT)
    assert spec.num_classes == 10 and spec.overrides == VIT
    _assert_same_logits(ref, model, VIT["img_size"])


def test_torchvision_convnext_gives_timms_logits_and_recipe():
    ref, sd = _torchvision_convnext()
    assert sd["features.5.1.layer_scale"].shape == (32, 1, 1)
    assert sd["features.6.1.weight"].shape == (48, 32, 2, 2)  # stage 3's downsample conv
    model, spec = convert_state_dict(sd, "convnext_tiny", **CONVNEXT)
    assert spec.num_classes == 10
    assert model.preprocess == Preprocess(224, 236, "bilinear")  # convnext_tiny IMAGENET1K_V1
    _assert_same_logits(ref, model, 64)
    model, _ = convert_state_dict(sd, "convnext_tiny", preprocess="convnext", **CONVNEXT)
    assert model.preprocess.interpolation == "bicubic"  # a given recipe wins


def test_in_proj_is_timms_qkv():
    """torch's own nn.MultiheadAttention (torchvision's attention) with ``in_proj_weight`` =
    timm's ``qkv.weight`` computes timm's attention: same [q; k; v] order and head layout."""
    _timm()
    from timm.models.vision_transformer import Attention

    torch.manual_seed(0)
    attn = randomize(Attention(64, num_heads=4, qkv_bias=True))
    mha = torch.nn.MultiheadAttention(64, 4, batch_first=True).eval()
    with torch.no_grad():
        mha.in_proj_weight.copy_(attn.qkv.weight)
        mha.in_proj_bias.copy_(attn.qkv.bias)
        mha.out_proj.weight.copy_(attn.proj.weight)
        mha.out_proj.bias.copy_(attn.proj.bias)
        x = torch.randn(2, 17, 64)
        np.testing.assert_allclose(mha(x, x, x, need_weights=False)[0].numpy(),
                                   attn(x).numpy(), atol=1e-5, rtol=0)


def test_recipes_are_torchvisions():
    assert torchvision_recipe("vit_base_patch16_224", 224)[0] == Preprocess(224, 256, "bilinear")
    assert torchvision_recipe("vit_large_patch16_224", 224)[0] == Preprocess(224, 242, "bilinear")
    assert torchvision_recipe("convnext_small", 224)[0] == Preprocess(224, 230, "bilinear")
    assert torchvision_recipe("convnext_base", 224)[0] == Preprocess(224, 232, "bilinear")
    # vit_b_16 IMAGENET1K_SWAG_E2E_V1: 384 px, resized straight to the crop, bicubic.
    assert torchvision_recipe("vit_base_patch16_224", 384)[0] == Preprocess(384, 384, "bicubic")


def test_pre_logits_is_refused_in_one_line():
    sd = {"conv_proj.weight": np.zeros((8, 3, 4, 4), np.float32),
          "encoder.layers.encoder_layer_0.ln_1.weight": np.zeros(8, np.float32),
          "heads.pre_logits.weight": np.zeros((8, 8), np.float32),
          "heads.head.weight": np.zeros((2, 8), np.float32)}
    with pytest.raises(CheckpointMismatchError, match=r"heads\.pre_logits") as e:
        convert_state_dict(sd, "vit_base_patch16_224")
    assert len(e.value.problems) == 1 and "\n" not in e.value.problems[0]


def test_torchvision_layouts_are_no_longer_foreign():
    _, vit = _torchvision_vit()
    _, convnext = _torchvision_convnext()
    assert foreign_layout(vit) is None and foreign_layout(convnext) is None
    swin = {"layers.0.blocks.0.attn.relative_position_bias_table": np.zeros((169, 3))}
    assert "Swin" in foreign_layout(swin)


@pytest.mark.parametrize("arch", ["vit_base_patch16_224", "convnext_tiny", "resnet50",
                                  "deit_tiny_distilled_patch16_224"])
def test_detection_leaves_timm_and_torchvision_resnet_names_alone(arch):
    # timm names; torchvision's ResNet names are the same (conv1, layer1.0.downsample.0, fc).
    keys = torch_layout(nnx.eval_shape(lambda: create(arch, num_classes=10)))
    assert not is_torchvision(keys)


def test_detection_leaves_hugging_face_names_alone():
    hf = ["vit.embeddings.cls_token", "vit.encoder.layer.0.attention.attention.query.weight",
          "vit.layers.0.attention.q_proj.weight", "classifier.weight",
          "convnext.embeddings.patch_embeddings.weight",
          "convnext.encoder.stages.0.layers.0.layer_scale_parameter",
          "convnext.encoder.stages.1.downsampling_layer.1.weight",
          "resnet.embedder.embedder.convolution.weight", "classifier.1.weight"]
    assert not is_torchvision(hf)


def test_launch_convert_checks_a_torchvision_vit_against_timm(tmp_path):
    """The converter's own parity line runs on torchvision names too (timm holds those weights
    under its names), and says where the eval recipe came from."""
    import subprocess
    import sys
    from pathlib import Path

    from safetensors.numpy import save_file

    timm = _timm()
    ref = randomize(timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=10))
    sd = {_vit_to_torchvision(k, False): np.ascontiguousarray(v.numpy())
          for k, v in ref.state_dict().items()}
    save_file(sd, str(tmp_path / "tv.safetensors"))
    tests = Path(__file__).resolve().parent
    run = ("import sys, runpy; sys.path.insert(0, sys.argv.pop(1)); "  # timm needs the stand-in
           "import torchvision_standin; torchvision_standin.import_timm(); "
           "runpy.run_module('launch.convert', run_name='__main__')")
    out = subprocess.run(
        [sys.executable, "-c", run, str(tests), f"--src={tmp_path / 'tv.safetensors'}",
         "--arch=vit_tiny_patch16_224", "--img_size=32", f"--out={tmp_path / 'ckpt'}"],
        cwd=tests.parent, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "eval recipe from torchvision's published transform" in out.stdout
    diff = float(out.stdout.split("max |logit difference| ")[1].split()[0])
    assert diff < TOL
