"""The DC-ViT launcher explains itself, rejects bad values before any work, and (slow) runs
end to end on the shipped vit_mini generalist."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from configs.dcvit.demo import get_config
from taco_jax.run import dcvit as dcvit_run

ROOT = Path(__file__).resolve().parents[1]


def _run(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "launch.dcvit", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def test_help_lists_every_flag_with_a_sentence():
    out = _run("--helpshort")
    assert out.returncode in (0, 1) and "Try --helpfull" in out.stdout, out.stderr
    for text in ("--config", "--workdir", "Config file", "Output directory"):
        assert text in out.stdout


def test_bad_config_fails_before_work_and_writes_nothing(tmp_path):
    workdir = tmp_path / "run"
    out = _run("--config=configs/dcvit/demo.py:attn_blocks=9", f"--workdir={workdir}")
    assert out.returncode != 0
    assert ("config.plan has (9, (0.375, 0.375, 0.375, 0.375)): 9 attention-free blocks; "
            "expected [0, 4]") in out.stderr
    assert not workdir.exists()


@pytest.mark.parametrize("variant, field, value, message", [
    ("mlp_keep=0", None, None, "config.plan has (0, (0.0, 0.0, 0.0, 0.0)): MLP fractions [0.0, "
     "0.0, 0.0, 0.0]; expected kept fractions in (0, 1]"),
    ("mlp_keep=1.0", None, None, "config.plan has (0, (1.0, 1.0, 1.0, 1.0)), which cuts nothing"),
    ("", "plan.mlp_keep", (0.5,) * 5, "config.plan has (0, (0.5, 0.5, 0.5, 0.5, 0.5)): 5 MLP "
     "fractions for 4 blocks"),
    ("drop_blocks=4", None, None, "config.baseline_drop_blocks has [4]; expected block counts "
     "in [0, 3]"),
    ("", "model.name", "resnet_mini", "'resnet_mini' is a resnet_mini, not a ViT/DeiT"),
    ("", "mode", "fast", "config.mode='fast'"),
    ("", "sweep.targets", (0.25, 1.5), "config.sweep.targets has [1.5]"),
    ("", "recover.ce_weight", 1.0, "recover.ce_weight must be 0"),
    ("", "sweep.dcvit", ((2, 0.5),), "config.sweep.dcvit has (2, 0.5); expected"),
    ("", "sweep.dcvit", ((1, (0.5, 1.5)),), "config.sweep.dcvit has (1, (0.5, 1.5)): MLP "
     "fractions [1.5]"),
    ("", "sweep.dcvit", ((0, (1.0,)),), "cuts nothing"),
    ("", "sweep.seeds", (0, 0), "config.sweep.seeds=(0, 0)"),
])
def test_parse_names_the_bad_value(variant, field, value, message):
    config = get_config(variant)
    if field is not None:
        *path, leaf = field.split(".")
        node = config
        for key in path:
            node = node[key]
        node[leaf] = value
    with pytest.raises(ValueError, match=re.escape(message)):
        dcvit_run.parse(config)


def test_unknown_variant_key_is_named():
    with pytest.raises(ValueError, match="unknown config variant key 'colour'"):
        get_config("colour=blue")


@pytest.mark.slow
@pytest.mark.parametrize("variant, output", [("runlocal,then_sparsity=0.5", "report.json"),
                                             ("runlocal,sweep", "sweep.json")])
def test_runlocal_end_to_end(tmp_path, variant, output):
    out = _run(f"--config=configs/dcvit/demo.py:{variant}", f"--workdir={tmp_path}",
               f"--config.cache_dir={tmp_path / 'empty_cache'}", timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads((tmp_path / output).read_text())
    assert not (tmp_path / "empty_cache").exists()  # the shipped generalist was used
    assert report["dense"]["top1"] > 60
    if output == "report.json":
        c = report["compressed"]
        assert c["params"] < report["dense"]["params"] and "block_drop" in report["baselines"]
        # the default plan: every block keeps its attention, every MLP is cut to plan.mlp_keep
        assert c["attn"] == [True] * 4 and c["mlp_keep"] == [get_config().plan.mlp_keep] * 4
        assert (tmp_path / "compressed" / "structure.json").exists()
        assert (tmp_path / "masks.npz").exists() and 0 < report["then_prune"]["top1"] <= 100
    else:
        assert (tmp_path / "frontier.png").stat().st_size > 1000
        assert len(report["points"]["dcvit"]) == 1 and len(report["points"]["block_drop"]) == 1
