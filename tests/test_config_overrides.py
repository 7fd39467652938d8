"""Configs are data: every leaf of every shipped config (and its documented variants) can be
set on the command line, through ml_collections' own flag parser, and the launcher's preflight
(the run module's ``parse``) accepts it; a field other defaults depend on (the target sparsity,
the model, the pattern, the recovery budget) can be overridden and the run follows it, the same
as the variant key that sets it. No parse loads data or trains (checked)."""

from __future__ import annotations

import re
from pathlib import Path

import ml_collections
import pytest
from absl import flags
from ml_collections import config_flags

from taco_jax.models import paths
from taco_jax.run import dcvit as dcvit_run
from taco_jax.run import taco as taco_run
from taco_jax.run import transfer as transfer_run

ROOT = Path(__file__).resolve().parents[1]

# Every shipped config file: its run module and the variants its docstrings and launchers show.
CONFIGS = {
    "configs/taco/demo.py": (taco_run, ["", "runlocal", "model=vit_mini", "pattern=2:4",
                                        "sparsity=0.75", "pool", "model=vit_mini,pattern=2:4",
                                        "shots=16,seed=1"]),
    "configs/taco/vit.py": (taco_run, ["", "pattern=2:4"]),
    "configs/dcvit/demo.py": (dcvit_run, ["", "runlocal", "sweep", "attn_blocks=1,mlp_keep=0.5",
                                          "attn_blocks=2", "then_sparsity=0.5",
                                          "runlocal,then_sparsity=0.5"]),
    "configs/transfer/demo.py": (transfer_run, ["", "runlocal", "transfer_set=random",
                                                "transfer_set=task"]),
    "configs/taco/pretrained.py": (taco_run, ["", "cpu", "family=vit", "family=convnext,cpu"]),
    **{f"configs/taco/{name}.py": (taco_run, ["", "cpu", "cpu,sparsity=0.5"])
       for name in ("resnet50", "vit_s16", "vit_b16", "convnext_t")},
    "configs/dcvit/pretrained.py": (dcvit_run, ["", "cpu", "attn_blocks=1"]),
    **{f"configs/dcvit/{name}.py": (dcvit_run, ["", "cpu", "cpu,mlp_keep=0.5"])
       for name in ("vit_s16", "vit_b16")},
    "configs/transfer/pretrained.py": (transfer_run, ["", "cpu", "family=vit,cpu"]),
    **{f"configs/transfer/{name}.py": (transfer_run, ["", "cpu", "cpu,transfer_set=random"])
       for name in ("resnet50", "vit_s16", "convnext_t")},
}


def _fake_checkpoint(arch: str) -> str:
    """A converted-checkpoint directory with only model.json and an empty state/: all a parse
    reads (no weights)."""
    import atexit
    import json
    import shutil
    import tempfile

    from taco_jax.models import PRESETS

    root = Path(tempfile.mkdtemp(prefix="fake-ckpt-"))
    atexit.register(shutil.rmtree, root, True)  # shared by the module's tests; gone at exit
    (root / "state").mkdir()
    (root / "model.json").write_text(json.dumps(
        {"format": 1, "arch": arch, "num_classes": 1000, "overrides": {},
         "preprocess": PRESETS["timm_resnet"].to_dict()}))
    return str(root)


# The family configs need a checkpoint and data: a fake checkpoint, the embedded task (whose
# classes a parse checks without reading data).
_FAMILY_ARGS = None


def base_args(path: str) -> list[str]:
    global _FAMILY_ARGS
    if Path(path).stem not in ("pretrained", "resnet50", "vit_s16", "vit_b16", "convnext_t"):
        return []
    if _FAMILY_ARGS is None:
        _FAMILY_ARGS = {arch: [f"--config.model.checkpoint={_fake_checkpoint(arch)}",
                               "--config.task.dataset=taco_embedded",
                               "--config.task.classes=('cat','dog')"]
                        for arch in ("resnet50", "vit_small_patch16_224")}
    pool = ["--config.pool.dataset=taco_embedded"] if "transfer" in path else []
    return _FAMILY_ARGS["vit_small_patch16_224" if "dcvit" in path else "resnet50"] + pool
CASES = [(path, variant) for path, (_, variants) in CONFIGS.items() for variant in variants]


@pytest.fixture(autouse=True)
def no_data_no_training(monkeypatch):
    """``parse`` is the launcher's preflight: reading a dataset or training fails the test."""
    from taco_jax import generalist
    from taco_jax.data import source
    from taco_jax.data.task import Task
    from taco_jax.train import fit

    def refuse(*args, **kwargs):
        raise AssertionError("parse loaded data or trained a model")

    for owner, name in [(source, "read_split"), (source, "open_split"), (source, "builder"),
                        (source, "class_names"), (Task, "load"), (fit, "fit"),
                        (generalist, "load_or_train")]:
        monkeypatch.setattr(owner, name, refuse)


def load(spec: str, *overrides: str) -> ml_collections.ConfigDict:
    """``--config=spec --config.a.b=v ...`` through a fresh absl flag set, as the launchers do."""
    argv = ["prog", f"--config={ROOT / spec}", *overrides]
    flag_values = flags.FlagValues()
    config = config_flags.DEFINE_config_file("config", None, "config file", lock_config=True,
                                             flag_values=flag_values, sys_argv=argv)
    flag_values(argv)
    return config.value


def leaves(config: ml_collections.ConfigDict, prefix: str = ""):
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def flag(path: str, value) -> str:
    """``--config.path=VALUE`` as a person would type it."""
    if isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, str):
        text = value
    else:
        text = repr(value)
    return f"--config.{path}={text}"


def spec(path: str, variant: str) -> str:
    return f"{path}:{variant}" if variant else path


@pytest.mark.parametrize("path, variant", CASES)
def test_every_leaf_overridden_to_its_own_value_parses_the_same(path, variant):
    run, _ = CONFIGS[path]
    base = load(spec(path, variant), *base_args(path))
    expected = run.parse(base)
    problems = []
    for leaf, value in leaves(base):
        arg = flag(leaf, value)
        try:
            fixed = [a for a in base_args(path) if not a.startswith(f"--config.{leaf}=")]
            config = load(spec(path, variant), *fixed, arg)
            if config.to_dict() != base.to_dict():
                problems.append(f"{arg}: the flag changed the config")
            elif run.parse(config) != expected:
                problems.append(f"{arg}: parse resolved it differently")
        except Exception as e:
            problems.append(f"{arg}: {type(e).__name__}: {e}")
    assert not problems, "\n".join(problems)
    assert sum(1 for _ in leaves(base)) > 10


# A variant key and the command-line override of the field it sets resolve to the same run.
SAME_AS_VARIANT = [
    ("configs/taco/demo.py", "model=vit_mini", ["--config.model.name=vit_mini"]),
    ("configs/taco/demo.py", "pattern=2:4", ["--config.prune.pattern=2:4"]),
    ("configs/taco/demo.py", "sparsity=0.75", ["--config.prune.sparsity=0.75"]),
    ("configs/taco/demo.py", "sparsity=0.5", ["--config.prune.sparsity=0.5"]),
    ("configs/taco/demo.py", "runlocal,sparsity=0.5", ["--config.prune.sparsity=0.5"]),
    ("configs/taco/demo.py", "model=vit_mini,pattern=2:4",
     ["--config.model.name=vit_mini", "--config.prune.pattern=2:4"]),
    ("configs/taco/demo.py", "pool", ["--config.pool.dataset=taco_embedded"]),
    ("configs/taco/demo.py", "shots=16,seed=1", ["--config.shots=16", "--config.seed=1"]),
    ("configs/taco/vit.py", "", ["--config.model.name=vit_mini"]),
    ("configs/dcvit/demo.py", "steps=50,then_sparsity=0.5",
     ["--config.recover.steps=50", "--config.then_prune.sparsity=0.5"]),
    ("configs/dcvit/demo.py", "attn_blocks=1,drop_blocks=2,seed=1",
     ["--config.plan.attn_blocks=1", "--config.baseline_drop_blocks=2", "--config.seed=1"]),
    ("configs/dcvit/demo.py", "sweep,block_outputs", ["--config.mode=sweep",
                                                     "--config.block_outputs=true"]),
    ("configs/transfer/demo.py", "transfer_set=random,transfer_size=300,shots=16,seed=1",
     ["--config.transfer_set=random", "--config.transfer_size=300", "--config.shots=16",
      "--config.seed=1"]),
]


@pytest.mark.parametrize("path, variant, overrides", SAME_AS_VARIANT)
def test_override_resolves_like_the_variant_key(path, variant, overrides):
    run, _ = CONFIGS[path]
    base = ",".join(k for k in ("runlocal",) if k in variant.split(","))
    assert run.parse(load(spec(path, base), *overrides)) == run.parse(load(spec(path, variant)))


@pytest.mark.parametrize("variant, budget", [("", 400), ("runlocal", 25)])
def test_lower_sparsity_drops_the_schedule_levels_at_or_above_it(variant, budget):
    """The reported failure: ``configs/taco/demo.py:runlocal --config.prune.sparsity=0.5`` kept
    the schedule (0.5,) computed for 0.9 and was refused."""
    taco_config, _ = taco_run.parse(load(spec("configs/taco/demo.py", variant),
                                            "--config.prune.sparsity=0.5"))
    assert taco_config.prune.sparsity == 0.5
    assert taco_config.levels() == (0.5,)  # no schedule level >= 0.5
    assert taco_config.final_recover_steps() == budget  # the whole budget goes to the one step

    taco_config, _ = taco_run.parse(load(spec("configs/taco/demo.py", variant),
                                            "--config.prune.sparsity=0.8"))
    assert taco_config.levels() == ((0.5, 0.75, 0.8) if not variant else (0.5, 0.8))
    assert (taco_config.final_recover_steps()
            + (len(taco_config.levels()) - 1) * taco_config.schedule_steps == budget)


def test_the_reported_command_line_parses():
    taco_config, src = taco_run.parse(load("configs/taco/demo.py:runlocal",
                                                     "--config.prune.sparsity=0.5"))
    assert taco_config.levels() == (0.5,)
    assert src.generalist.steps == 60  # runlocal's, not the model's default


def test_recovery_budget_and_explicit_schedule():
    taco_config, _ = taco_run.parse(load("configs/taco/demo.py", "--config.recover.steps=1000",
                                            "--config.schedule=(0.6,)",
                                            "--config.schedule_steps=50"))
    assert taco_config.levels() == (0.6, 0.9) and taco_config.final_recover_steps() == 950
    taco_config, _ = taco_run.parse(load("configs/taco/demo.py", "--config.schedule=()"))
    assert taco_config.levels() == (0.9,) and taco_config.final_recover_steps() == 400
    taco_config, _ = taco_run.parse(load("configs/taco/demo.py",
                                            "--config.schedule_levels=(0.3,0.6,0.95)"))
    assert taco_config.levels() == (0.3, 0.6, 0.9)


def test_model_and_pattern_overrides_follow_through():
    taco_config, src = taco_run.parse(load("configs/taco/demo.py",
                                                     "--config.model.name=vit_mini",
                                                     "--config.prune.pattern=2:4"))
    assert src.generalist.steps == 6000  # vit_mini's default recipe: the shipped generalist
    assert paths.resolve_stem(src.model.abstract(), taco_config.prune.overrides) == {
        "patch_embed.proj": 0.0}  # its stem stays dense
    assert (taco_config.prune.resolved_allocation, len(taco_config.levels())) == ("uniform", 1)
    assert taco_config.final_recover_steps() == 400
    _, src = taco_run.parse(load("configs/taco/demo.py",
                                           "--config.generalist.steps=900"))
    assert src.generalist.steps == 900
    _, src, _ = transfer_run.parse(load("configs/transfer/demo.py",
                                                  "--config.model.name=vit_mini"))
    assert src.generalist.steps == 6000
    settings = dcvit_run.parse(load("configs/dcvit/demo.py", "--config.recover.steps=50",
                                    "--config.then_prune.sparsity=0.5"))
    assert (settings.dcvit.recover.steps, settings.dcvit.then_recover_steps) == (50, 0)  # 0: 50
    settings = dcvit_run.parse(load("configs/dcvit/demo.py", "--config.then_prune.sparsity=0.5",
                                    "--config.then_prune.recover_steps=30"))
    assert (settings.dcvit.recover.steps, settings.dcvit.then_recover_steps) == (120, 30)


@pytest.mark.parametrize("overrides, message", [
    (["--config.prune.pattern=2:4", "--config.schedule=(0.25,)"],
     "config: schedule=(0.25,): an N:M pattern (2:4) has one fixed level"),
    (["--config.prune.pattern=2:4", "--config.prune.allocation=global"],
     "config.prune: allocation='global': an N:M pattern (2:4)"),
    (["--config.schedule=(0.75,0.5)"], "config: schedule=(0.75, 0.5) must increase"),
    (["--config.prune.sparsity=0.5", "--config.schedule=(0.5,)"],
     "config: schedule=(0.5,) must increase from > 0 to below the target "
     "prune.sparsity=0.5"),
    (["--config.schedule=gradual"], "config: schedule='gradual'; expected 'auto'"),
    (["--config.schedule_levels=(0.5,1.5)"], "config: schedule_levels has [1.5]"),
    (["--config.recover.steps=200"], "config: recover.steps=200 is the whole recovery budget"),
    (["--config.prune.overrides=(('conv9',0.0),)"],
     "config.prune.overrides of 'resnet_mini': ['conv9'] are not layers"),
    (["--config.model.name=vit_mini", "--config.prune.overrides=(('conv1',0.0),)"],
     "config.prune.overrides of 'vit_mini': ['conv1'] are not layers"),
    (["--config.generalist.steps=-1"], "config.generalist.steps=-1"),
])
def test_bad_values_are_named(overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        taco_run.parse(load("configs/taco/demo.py", *overrides))


def test_dcvit_bad_then_recover_steps_is_named():
    with pytest.raises(ValueError, match=re.escape("config.then_prune.recover_steps=-5")):
        dcvit_run.parse(load("configs/dcvit/demo.py", "--config.then_prune.recover_steps=-5"))


def test_cases_cover_every_shipped_config():
    shipped = {str(p.relative_to(ROOT)) for p in (ROOT / "configs").glob("*/*.py")
               if p.name != "__init__.py"}
    assert shipped == set(CONFIGS)


def test_library_defaults_are_the_shipped_demo_configs():
    """One set of defaults: each method's config dataclass, built with no arguments, equals what
    the launcher's preflight makes of the shipped demo config (field by field, nested too)."""
    from taco_jax import generalist
    from taco_jax.methods import dcvit, taco, transfer

    taco_config, src = taco_run.parse(load("configs/taco/demo.py"))
    assert taco_config == taco.TacoConfig()
    assert src.generalist == generalist.recipe("resnet_mini")  # what generalist.load uses
    assert taco_config.levels() == (0.5, 0.75, 0.9) and taco_config.final_recover_steps() == 200
    assert dcvit_run.parse(load("configs/dcvit/demo.py")).dcvit == dcvit.DcvitConfig()
    transfer_config, _, _ = transfer_run.parse(load("configs/transfer/demo.py"))
    assert transfer_config == transfer.TransferConfig()


def test_name_lists_take_commas_and_empty_on_the_command_line():
    for text, expected in [("", ()), ("magnitude", ("magnitude",)),
                           ("magnitude,task_agnostic", ("magnitude", "task_agnostic")),
                           ("('magnitude',)", ("magnitude",))]:
        taco_config, _ = taco_run.parse(load("configs/taco/demo.py",
                                             f"--config.baselines={text}"))
        assert taco_config.baselines == expected, text
    cfg, _, _ = transfer_run.parse(load("configs/transfer/demo.py",
                                        "--config.baselines=task_agnostic,random_pool"))
    assert cfg.baselines == ("task_agnostic", "random_pool")  # was split into characters
    with pytest.raises(ValueError, match=r"unknown baselines \['magnitud'\]"):
        taco_run.parse(load("configs/taco/demo.py", "--config.baselines=magnitud"))
