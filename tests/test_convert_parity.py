"""Logits parity with the PyTorch reference implementations (timm and Hugging Face
transformers), random weights, float32, eval mode, non-trivial norm statistics and scales."""

import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")

from taco_jax.convert import convert_state_dict  # noqa: E402

TOL = 1e-4


def _timm():
    from torchvision_standin import import_timm

    try:
        return import_timm()
    except ImportError:
        pytest.skip("timm is not installed (pip install --no-deps timm)")


def randomize(module: "torch.nn.Module", seed: int = 0) -> "torch.nn.Module":
    """Give every 1-D parameter/buffer (norm scales and shifts, BatchNorm running statistics,
    layer scales, biases) and every token/position embedding random non-trivial values, so a
    swapped or missing tensor shows in the logits. Matrices keep the library's random init."""
    g = torch.Generator().manual_seed(seed)
    bn_weights = {f"{n}.weight" for n, m in module.named_modules()
                  if isinstance(m, torch.nn.BatchNorm2d)}
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if not t.is_floating_point():
                continue
            if name in bn_weights:  # kept below 1 so deep ResNets do not blow up
                t.copy_(0.2 + 0.5 * torch.rand(t.shape, generator=g))
            elif name.endswith(("running_var", "gamma", "layer_scale_parameter", "weight"))\
                    and t.ndim == 1:
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif t.ndim == 1 or name.endswith(("token", "pos_embed", "position_embeddings")):
                t.copy_(0.2 * torch.randn(t.shape, generator=g))
    return module.eval()


def calibrate_batchnorm(module: "torch.nn.Module", img_size: int) -> "torch.nn.Module":
    """Set BatchNorm running statistics to those of a random batch, so activations stay O(1)
    through deep nets (random running_var alone makes ResNet-50 logits ~300, where float32
    rounding alone exceeds the tolerance). The statistics are then non-trivial, not 0 and 1."""
    bns = [m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    if not bns:
        return module
    g = torch.Generator().manual_seed(1)
    for bn in bns:
        bn.momentum = 1.0
    with torch.no_grad():
        module.train()(torch.randn((8, 3, img_size, img_size), generator=g))
    for bn in bns:
        bn.momentum = 0.1
    return module.eval()


def assert_parity(torch_model, arch: str, img_size: int, *, batch: int = 2, **overrides):
    calibrate_batchnorm(torch_model, img_size)
    sd = {k: v.numpy() for k, v in torch_model.state_dict().items()}
    model, spec = convert_state_dict(sd, arch, **overrides)
    x = np.random.default_rng(0).standard_normal((batch, img_size, img_size, 3), np.float32)
    with torch.no_grad():
        out = torch_model(torch.from_numpy(x.transpose(0, 3, 1, 2)))
    ref = (out.logits if hasattr(out, "logits") else out).numpy()
    ours = np.asarray(nnx.jit(lambda m, x: m(x))(model, x))
    assert ours.shape == ref.shape
    assert np.abs(ref).max() > 0.1  # the comparison means something
    print(f"parity {arch}@{img_size}: max abs diff {np.abs(ours - ref).max():.2e}, "
          f"max |logit| {np.abs(ref).max():.2f}")
    np.testing.assert_allclose(ours, ref, atol=TOL, rtol=0)
    return model, spec


# (arch, img_size). CNNs run at 64 px to stay fast: the layers are the same at any size.
TIMM_FAST = [("resnet18", 64), ("resnet50", 64), ("vit_tiny_patch16_224", 224),
             ("deit_tiny_distilled_patch16_224", 224), ("convnext_tiny", 64)]
TIMM_SLOW = [("resnet34", 224), ("resnet101", 224), ("vit_small_patch16_224", 224),
             ("vit_base_patch16_224", 224), ("vit_large_patch16_224", 224),
             ("deit_tiny_patch16_224", 224), ("deit_small_patch16_224", 224),
             ("deit_base_patch16_224", 224), ("deit_small_distilled_patch16_224", 224),
             ("deit_base_distilled_patch16_224", 224), ("convnext_small", 224),
             ("convnext_base", 224), ("resnet50", 224), ("convnext_tiny", 224)]


@pytest.mark.parametrize(("arch", "img_size"), TIMM_FAST)
def test_timm_parity(arch, img_size):
    assert_parity(randomize(_timm().create_model(arch, pretrained=False)), arch, img_size)


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "img_size"), TIMM_SLOW)
def test_timm_parity_all_sizes(arch, img_size):
    assert_parity(randomize(_timm().create_model(arch, pretrained=False)), arch, img_size)


def test_timm_parity_with_resized_position_embedding():
    timm = _timm()
    from timm.layers import resample_abs_pos_embed

    src = randomize(timm.create_model("vit_tiny_patch16_224", pretrained=False))
    sd = src.state_dict()
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=96).eval()
    ref.load_state_dict({**sd, "pos_embed": resample_abs_pos_embed(sd["pos_embed"], (6, 6))})
    sd_np = {k: v.numpy() for k, v in sd.items()}
    model, spec = convert_state_dict(sd_np, "vit_tiny_patch16_224", img_size=96)
    assert model.pos_embed.value.shape == (1, 37, 192) and spec.overrides == {"img_size": 96}
    x = np.random.default_rng(1).standard_normal((2, 96, 96, 3), np.float32)
    with torch.no_grad():
        expected = ref(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    np.testing.assert_allclose(model(x), expected, atol=TOL, rtol=0)


def _transformers():
    return pytest.importorskip("transformers")


def _hf_model(kind: str):
    """Hugging Face models shaped like our registered archs (configs as on the Hub)."""
    tr = _transformers()
    vit_tiny = {"hidden_size": 192, "num_hidden_layers": 12, "num_attention_heads": 3,
                "intermediate_size": 768, "image_size": 224, "patch_size": 16, "num_labels": 1000}
    torch.manual_seed(0)
    if kind == "vit":
        return tr.ViTForImageClassification(tr.ViTConfig(**vit_tiny))
    if kind == "deit":
        return tr.DeiTForImageClassificationWithTeacher(tr.DeiTConfig(**vit_tiny))
    if kind == "convnext":
        return tr.ConvNextForImageClassification(tr.ConvNextConfig(num_labels=1000))
    if kind == "resnet50":
        return tr.ResNetForImageClassification(tr.ResNetConfig(num_labels=1000))
    return tr.ResNetForImageClassification(tr.ResNetConfig(
        layer_type="basic", hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2],
        num_labels=1000))


HF_CASES = [("vit", "vit_tiny_patch16_224", 224), ("deit", "deit_tiny_distilled_patch16_224", 224),
            ("convnext", "convnext_tiny", 64), ("resnet50", "resnet50", 64),
            ("resnet18", "resnet18", 64)]


@pytest.mark.parametrize(("kind", "arch", "img_size"), HF_CASES)
def test_hugging_face_parity(kind, arch, img_size):
    assert_parity(randomize(_hf_model(kind)), arch, img_size)


# transformers 5 renamed the ViT modules; Hub checkpoints still carry the old names.
_TO_HUB_NAMES = [(r"^(vit|deit)\.layers\.", r"\1.encoder.layer."),
                 (r"\.attention\.q_proj\.", ".attention.attention.query."),
                 (r"\.attention\.k_proj\.", ".attention.attention.key."),
                 (r"\.attention\.v_proj\.", ".attention.attention.value."),
                 (r"\.attention\.o_proj\.", ".attention.output.dense."),
                 (r"\.mlp\.fc1\.", ".intermediate.dense."), (r"\.mlp\.fc2\.", ".output.dense.")]


def test_hugging_face_hub_names_give_the_same_model():
    import re

    hf = randomize(_hf_model("vit"))
    sd = {k: v.numpy() for k, v in hf.state_dict().items()}
    hub = {}
    for key, value in sd.items():
        for pattern, repl in _TO_HUB_NAMES:
            key = re.sub(pattern, repl, key)
        hub[key] = value
    assert "vit.encoder.layer.3.attention.attention.query.weight" in hub
    a, spec_a = convert_state_dict(sd, "vit_tiny_patch16_224")
    b, spec_b = convert_state_dict(hub, "vit_tiny_patch16_224")
    assert spec_a == spec_b and spec_a.overrides == {"norm_eps": 1e-12}
    for x, y in zip(nnx.to_flat_state(nnx.state(a)), nnx.to_flat_state(nnx.state(b)),
                    strict=True):
        assert x[0] == y[0] and np.array_equal(x[1].value, y[1].value)


def _augreg_npz(path, *, big_vision: bool, dim=192, heads=3, depth=12, classes=1000, seed=0):
    """A random checkpoint in Google's JAX ViT layout (vit_tiny_patch16_224 shapes)."""
    rng = np.random.default_rng(seed)
    normal = lambda *shape, s=0.05: (s * rng.standard_normal(shape)).astype(np.float32)
    scale = lambda n: (0.5 + rng.random(n)).astype(np.float32)
    mha, mlp, ln2 = (0, 0, 1) if big_vision else (1, 3, 2)
    pre = "params/" if big_vision else ""
    w = {"embedding/kernel": normal(16, 16, 3, dim), "embedding/bias": normal(dim, s=0.2),
         "cls": normal(1, 1, dim, s=0.2), "Transformer/encoder_norm/scale": scale(dim),
         "Transformer/encoder_norm/bias": normal(dim, s=0.2), "head/kernel": normal(dim, classes),
         "head/bias": normal(classes, s=0.2)}
    pos = "pos_embedding" if big_vision else "Transformer/posembed_input/pos_embedding"
    w[pos] = normal(1, 197, dim, s=0.2)
    for i in range(depth):
        b = f"Transformer/encoderblock_{i}/"
        att = f"{b}MultiHeadDotProductAttention_{mha}/"
        for ln in ("LayerNorm_0", f"LayerNorm_{ln2}"):
            w[f"{b}{ln}/scale"], w[f"{b}{ln}/bias"] = scale(dim), normal(dim, s=0.2)
        for n in ("query", "key", "value"):
            w[f"{att}{n}/kernel"] = normal(dim, heads, dim // heads)
            w[f"{att}{n}/bias"] = normal(heads, dim // heads, s=0.2)
        w[f"{att}out/kernel"], w[f"{att}out/bias"] = normal(heads, dim // heads, dim), normal(dim)
        w[f"{b}MlpBlock_{mlp}/Dense_0/kernel"] = normal(dim, 4 * dim)
        w[f"{b}MlpBlock_{mlp}/Dense_0/bias"] = normal(4 * dim, s=0.2)
        w[f"{b}MlpBlock_{mlp}/Dense_1/kernel"] = normal(4 * dim, dim)
        w[f"{b}MlpBlock_{mlp}/Dense_1/bias"] = normal(dim, s=0.2)
    np.savez(path, **{pre + k: v for k, v in w.items()})


@pytest.mark.parametrize("big_vision", [False, True])
def test_augreg_npz_parity_with_timms_npz_loader(tmp_path, big_vision):
    timm = _timm()
    from timm.models.vision_transformer import _load_weights

    from taco_jax.convert import load_state_dict

    _augreg_npz(tmp_path / "w.npz", big_vision=big_vision)
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False).eval()
    _load_weights(ref, str(tmp_path / "w.npz"))
    model, _ = convert_state_dict(load_state_dict(tmp_path / "w.npz"), "vit_tiny_patch16_224")
    x = np.random.default_rng(2).standard_normal((2, 224, 224, 3), np.float32)
    with torch.no_grad():
        expected = ref(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    assert np.abs(expected).max() > 0.1
    np.testing.assert_allclose(nnx.jit(lambda m, x: m(x))(model, x), expected, atol=TOL, rtol=0)
