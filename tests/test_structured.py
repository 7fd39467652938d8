"""Structured TACO to a measured speed: the interleaved speed measurement, the speed budget's
search, the specialist with cut shapes on disk, and the run end to end on a user's checkpoint."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import PIL.Image
import pytest
from flax import nnx

from taco_jax import convert, models
from taco_jax.export.specialist import load_specialist, save_specialist
from taco_jax.methods import taco
from taco_jax.models.latency import speedups
from taco_jax.models.paths import get_layer
from taco_jax.models.preprocess import Preprocess
from taco_jax.models.shrink import infer_pairs, shrink_pair
from taco_jax.models.vit import remove_branches, removed_branches
from taco_jax.prune import allocate, sequential, speed_budget
from taco_jax.run import evaluate

ROOT = Path(__file__).resolve().parents[1]


class _Matmul(nnx.Module):
    """A model that is one (d, d) matmul on flattened inputs: its cost is set by d alone."""

    def __init__(self, d: int):
        self.d = d
        self.layer = nnx.Linear(d, d, rngs=nnx.Rngs(0))

    def __call__(self, x):
        return self.layer(jnp.resize(x.reshape(x.shape[0], -1), (x.shape[0], self.d)))


def test_speedups_times_candidates_against_one_interleaved_reference():
    x = jnp.ones((256, 8, 8, 1))
    big, small = _Matmul(2048), _Matmul(64)
    out = speedups(big, {"small": small, "itself": big}, x, min_rounds=5, max_rounds=5)
    assert out["batch"] == 256 and out["rounds"] == 5
    # 1024x fewer MACs (1 GMAC, some ms, vs a call's overhead): far faster whatever the load
    # (at d = 1024, 4.3x with a spread from 1.7 under load); the same model: within noise of 1.
    assert out["small"]["speedup"] > 4 and out["small"]["spread"][0] > 2
    assert 0.5 < out["itself"]["speedup"] < 2
    lo, hi = out["itself"]["spread"]
    assert lo <= out["itself"]["speedup"] <= hi
    with pytest.raises(ValueError, match="min_rounds"):
        speedups(big, {"small": small}, x, min_rounds=3, max_rounds=2)


def _cut_randomly(model: nnx.Module, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for p in infer_pairs(model)[::2]:
        units = get_layer(model, p.consumer).in_features // p.group_size
        keep = np.sort(rng.choice(units, units // 2, replace=False))
        shrink_pair(model, p, (keep[:, None] * p.group_size + np.arange(p.group_size)).ravel())


@pytest.mark.parametrize("arch, overrides", [
    ("resnet_mini", {}), ("vit_mini", {}),
    ("convnext_tiny", {"depths": (1, 1), "dims": (8, 16), "in_chans": 1})])
def test_structured_specialist_is_rebuilt_exactly_from_disk(arch, overrides, tmp_path):
    model = models.create(arch, num_classes=4, rngs=nnx.Rngs(3), **overrides)
    model.eval()
    _cut_randomly(model)
    path = save_specialist(tmp_path / "s", model, arch, overrides, ["a", "b", "c", "d"],
                           {"m": "t"})
    meta = json.loads((path / "model.json").read_text())
    expected = {p.consumer for p in infer_pairs(
        models.create(arch, num_classes=4, **overrides))[::2]}
    assert set(meta["cuts"]) == expected and expected
    loaded, meta = load_specialist(path)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 28, 28, 1)), jnp.float32)
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))


def test_vit_specialist_with_removed_branches_is_rebuilt_exactly_from_disk(tmp_path):
    """DC-ViT's shapes: attention removed from some blocks, an MLP from one, MLP neurons and
    heads cut elsewhere; model.json names the branches and the rebuilt model's logits are
    bit-identical. Blocks dropped from the list do not fit and are refused."""
    model = models.create("vit_mini", num_classes=4, rngs=nnx.Rngs(3))
    model.eval()
    remove_branches(model, ["blocks.0.attn", "blocks.2.attn", "blocks.1.mlp"])
    _cut_randomly(model)
    path = save_specialist(tmp_path / "s", model, "vit_mini", {}, list("abcd"), {})
    meta = json.loads((path / "model.json").read_text())
    assert meta["removed"] == ["blocks.0.attn", "blocks.1.mlp", "blocks.2.attn"]
    assert meta["cuts"] and not any(c.startswith(("blocks.0.attn", "blocks.1.mlp"))
                                    for c in meta["cuts"])
    loaded, _ = load_specialist(path)
    assert removed_branches(loaded) == meta["removed"]
    x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 28, 28, 1)), jnp.float32)
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))
    with pytest.raises(ValueError, match=r"'blocks.9.attn' is not a removable branch"):
        remove_branches(models.create("vit_mini", num_classes=4), ["blocks.9.attn"])
    model.blocks = nnx.List(list(model.blocks)[:2])
    with pytest.raises(ValueError, match="beyond structured cuts and removed branches"):
        save_specialist(tmp_path / "t", model, "vit_mini", {}, list("abcd"), {})


def test_a_speed_beyond_the_prunable_layers_is_refused_in_one_line():
    model = models.create("vit_mini", num_classes=3, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((8, 28, 28, 1)), jnp.float32)
    config = sequential.PruneConfig(pattern="structured", allocation="uniform",
                                    target_speedup=100.0)
    names = sequential.default_layers(model, config)
    with pytest.raises(ValueError, match=r"target_speedup=100 is out of reach on this runtime: "
                                         r"removing 95% .* gives [0-9.]+x at batch 8"):
        speed_budget.sparsity_for_speedup(model, [x], config, names, x)


def test_the_speed_budget_picks_a_level_measured_at_the_target():
    model = models.create("vit_mini", num_classes=3, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((64, 28, 28, 1)), jnp.float32)
    config = sequential.PruneConfig(pattern="structured", allocation="uniform",
                                    target_speedup=1.3)
    names = sequential.default_layers(model, config)
    level, info = speed_budget.sparsity_for_speedup(model, [x[:16]], config, names, x, steps=4)
    chosen = [t for t in info["tries"] if t["sparsity"] == level]
    assert chosen and chosen[-1]["speedup"] >= 1.3 and 0 < level <= 0.95  # its last timing
    # the deepest level, 4 bisection steps, then 1-2 fresh timings (none if the deepest won)
    assert 5 <= len(info["tries"]) <= 7
    assert len(info["tries"]) > 5 or level == 0.95
    # Every level measured below the target is shallower than the chosen one.
    assert all(t["sparsity"] < level for t in info["tries"] if t["speedup"] < 1.3)


def test_the_speed_budget_hands_its_allocation_to_the_prune(monkeypatch):
    """The prune at the budget's level takes the levels the search allocated: the same
    per-layer sparsities as allocating again, without measuring the error curves a second
    time (on ResNet-50 they cost 26 minutes)."""
    model = models.create("vit_mini", num_classes=3, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((32, 28, 28, 1)), jnp.float32)
    config = sequential.PruneConfig(pattern="structured", allocation="global",
                                    target_speedup=1.2)
    names = sequential.default_layers(model, config)
    calls = []
    curves = allocate.error_curves
    monkeypatch.setattr(allocate, "error_curves",
                        lambda *a, **k: calls.append(1) or curves(*a, **k))
    level, info = speed_budget.sparsity_for_speedup(model, [x[:16]], config, names, x, steps=2)
    assert len(calls) == 1 and set(info["levels"]) == set(names)
    at_level = dataclasses.replace(config, sparsity=level)
    reused = sequential.prune_model(nnx.clone(model), [x[:16]], at_level, layers=names,
                                    levels=info["levels"])
    assert len(calls) == 1
    again = sequential.prune_model(nnx.clone(model), [x[:16]], at_level, layers=names)
    assert len(calls) == 2 and reused.sparsities == again.sparsities
    with pytest.raises(ValueError, match="levels has no sparsity for"):
        sequential.prune_model(nnx.clone(model), [x[:16]], at_level, layers=names, levels={})


@pytest.mark.parametrize("overrides, message", [
    (dict(baselines=("magnitude_gmp",)), "magnitude_gmp .* is for masked patterns"),
    (dict(schedule=(0.3,)), "structured pruning is one-shot"),
    (dict(latency_batch=0, target=2.0), "measured at latency_batch, which is 0"),
    (dict(baselines=("unstructured",), pattern="unstructured"), "is for pattern='structured'"),
    (dict(baselines=("dcvit",), pattern="2:4"), r"dcvit \(DC-ViT's cut .* is for pattern="),
])
def test_structured_configs_refuse_what_does_not_apply(overrides, message):
    target = overrides.pop("target", 0.0)
    prune = sequential.PruneConfig(pattern=overrides.pop("pattern", "structured"), sparsity=0.5,
                                   target_speedup=target)
    with pytest.raises(ValueError, match=message):
        taco.TacoConfig(prune=prune, **overrides)
    with pytest.raises(ValueError, match=r"target_speedup=2\.0 needs pattern='structured'"):
        sequential.PruneConfig(pattern="unstructured", target_speedup=2.0)
    with pytest.raises(ValueError, match=r"target_speedup must be > 1"):
        sequential.PruneConfig(pattern="structured", target_speedup=0.5)


def test_dcvit_baseline_is_for_vits_named_or_dropped_from_auto(monkeypatch):
    """Named for a ResNet, the DC-ViT baseline is refused before any work; "auto" leaves it
    out for a ResNet (the refusal would otherwise come first); several processes skip it (the
    cut and its recovery are single-process), saying so in the row."""
    from taco_jax.data.task import TaskData

    model = models.create("resnet_mini", num_classes=4, rngs=nnx.Rngs(0))
    x, y = np.zeros((6, 28, 28, 1), np.uint8), np.arange(6) % 2
    data = TaskData(x, y, x, y, np.array([0, 1]), ("a", "b"), lambda im: jnp.asarray(im) / 255)
    prune = sequential.PruneConfig(pattern="structured", sparsity=0.5)
    with pytest.raises(ValueError, match=r"baseline dcvit cuts a vision transformer's .* "
                                         r"the model is a ResNet"):
        taco.compress(model, data, taco.TacoConfig(prune=prune, baselines=("dcvit",)))
    assert "dcvit" in taco.TacoConfig(prune=prune).resolved_baselines()
    with pytest.raises(ValueError, match="shots"):  # past the baselines' check, into the work
        taco.compress(model, data, taco.TacoConfig(prune=prune, shots=8))
    monkeypatch.setattr(taco.jax, "process_count", lambda: 2)
    row, cut = taco._dcvit_at_macs(*[None] * 6, {}, None)
    assert cut is None and row == {"skipped": "DC-ViT runs in a single process"}


def test_structured_defaults_compare_with_uniform_channel_pruning():
    prune = sequential.PruneConfig(pattern="structured", sparsity=0.5)
    config = taco.TacoConfig(prune=prune)
    assert config.resolved_baselines() == taco.STRUCTURED_BASELINES
    assert config.levels() == (0.5,)  # one-shot: no schedule below the target
    assert taco.TacoConfig().resolved_baselines() == taco.DEFAULT_BASELINES


@pytest.fixture(scope="module")
def leaves(tmp_path_factory) -> Path:
    """root/<class>/<i>.png, 3 classes told apart by colour, 32x32 RGB."""
    root = tmp_path_factory.mktemp("leaves")
    rng = np.random.default_rng(0)
    for c, name in enumerate(("maple", "oak", "pine")):
        (root / name).mkdir()
        for i in range(15):
            image = rng.integers(0, 80, (32, 32, 3), dtype=np.uint8)
            image[..., c] += 150
            PIL.Image.fromarray(image).save(root / name / f"{i:02d}.png")
    return root


def test_structured_taco_run_to_a_speed_writes_a_faster_specialist(leaves, tmp_path):
    """The launcher on a user's ViT checkpoint and image folder with
    prune.target_speedup: the level comes from measured candidates, the report measures every
    model against one dense reference, the summary leads with speed, and the cut specialist
    is rebuilt from its workdir with the report's top-1."""
    model = models.create("vit_mini", num_classes=6, rngs=nnx.Rngs(1), in_chans=3, img_size=32)
    model.preprocess = Preprocess(32, 32, "bilinear", (0.5,) * 3, (0.25,) * 3)
    ckpt = convert.save_checkpoint(model, convert.ModelSpec("vit_mini", 6, dict(
        in_chans=3, img_size=32)), tmp_path / "ckpt")
    workdir = tmp_path / "run"
    out = subprocess.run(
        [sys.executable, "-m", "launch.taco", "--config=configs/taco/demo.py:runlocal",
         f"--config.model.checkpoint={ckpt}", "--config.task.dataset=image_folder",
         f"--config.task.data_dir={leaves}", "--config.task.classes=()",
         "--config.prune.pattern=structured", "--config.prune.target_speedup=1.2",
         "--config.recover.steps=3",
         "--config.baselines=('magnitude_uniform','unstructured','dcvit')",
         "--config.latency_batch=32", f"--workdir={workdir}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads((workdir / "report.json").read_text())
    budget = r["speed_budget"]
    assert budget["target_speedup"] == 1.2 and budget["batch"] == 32
    assert any(t["sparsity"] == budget["sparsity"] and t["speedup"] >= 1.2
               for t in budget["tries"])
    assert r["schedule"][0]["sparsity"] == budget["sparsity"]
    assert "sparsity" not in r and r["pattern"] == "structured"  # no masks: cut shapes
    assert r["size"]["macs"]["reduction"] > 1.1 and r["size"]["params"]["reduction"] > 1.1
    assert set(r["speed"]) == {"xla-cpu", "onnxruntime-cpu"}
    for runtime in r["speed"].values():  # every model, one dense reference per batch
        for b in ("batch_1", "batch_32"):
            assert {"taco", "magnitude_uniform", "unstructured", "dcvit",
                    "reference_seconds"} <= set(runtime[b])
    assert r["baselines"]["magnitude_uniform"]["label"].startswith("channel-norm pruning")
    same = r["baselines"]["unstructured"]  # masks with as many non-zeros as TACO's cut model
    assert same["size"]["params"]["reduction"] == 1.0 and "sparsity" in same
    assert same["size"]["nonzero"]["compressed"] == pytest.approx(
        r["size"]["nonzero"]["compressed"], rel=0.02)
    cut = r["baselines"]["dcvit"]  # DC-ViT's cut, no more MACs than TACO's
    assert cut["size"]["macs"]["compressed"] <= r["size"]["macs"]["compressed"]
    assert cut["plan"] in [c.get("plan") for c in cut["candidates"]] and "sparsity" not in cut
    assert r["plot"] == "summary.png" and (workdir / "summary.png").stat().st_size > 10_000
    assert "TACO specialist on this machine:" in out.stderr
    assert "in onnxruntime-cpu at batch 32" in out.stderr
    cuts = json.loads((workdir / "specialist" / "model.json").read_text())["cuts"]
    assert set(cuts) <= {p.consumer for p in infer_pairs(model)} and cuts
    assert evaluate.evaluate_workdir(workdir)["top1"] == r["compressed"]["top1"]
