"""README.md's Python blocks run as written: the library section is code a user can paste.

The default-suite test runs them with each ``compress`` given its config shrunk to a few steps
(the same calls, data and defaults otherwise; the config each block passes is checked to be
the library default, the launcher's); the slow test runs them unchanged (the full demo budget:
about half an hour on 2 cores)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from taco_jax.methods import dcvit, taco, transfer

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def _shrink_taco(c: taco.TacoConfig) -> taco.TacoConfig:
    """A few steps, no baselines, uniform levels (the error curves' compiles were half of it)."""
    return dataclasses.replace(c, shots=4, schedule=(), baselines=(), latency_batch=0,
                               prune=dataclasses.replace(c.prune, allocation="uniform"),
                               recover=dataclasses.replace(c.recover, steps=2, batch_size=8))


def _shrink_dcvit(c: dcvit.DcvitConfig) -> dcvit.DcvitConfig:
    return dataclasses.replace(c, shots=4, baseline_drop_blocks=0, latency_batch=0,
                               recover=dataclasses.replace(c.recover, steps=2, batch_size=8))


def _shrink_transfer(c: transfer.TransferConfig) -> transfer.TransferConfig:
    return dataclasses.replace(c, shots=4, transfer_size=40, baselines=(), latency_batch=0,
                               distill=dataclasses.replace(c.distill, steps=2, batch_size=8),
                               finetune=dataclasses.replace(c.finetune, steps=2, batch_size=8))


def _run_blocks(tmp_path, monkeypatch) -> dict:
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in python_blocks():
        exec(compile(block, str(README), "exec"), namespace)
    return namespace


def test_readme_has_the_library_blocks():
    blocks = python_blocks()
    assert len(blocks) == 2
    assert "taco.compress(" in blocks[0] and "TacoConfig()" in blocks[0]
    assert "dcvit.compress(" in blocks[1] and "transfer.compress(" in blocks[1]


def test_readme_python_blocks_run_with_small_budgets(tmp_path, monkeypatch):
    seen = []
    for module, shrink, default in ((taco, _shrink_taco, taco.TacoConfig()),
                                    (dcvit, _shrink_dcvit, dcvit.DcvitConfig()),
                                    (transfer, _shrink_transfer, transfer.TransferConfig())):
        def small(model, data, config, *, real=module.compress, shrink=shrink, default=default,
                  **kwargs):
            assert config == default  # the README shows the library's (the launcher's) defaults
            seen.append(type(config).__name__)
            return real(model, data, shrink(config), **kwargs)

        monkeypatch.setattr(module, "compress", small)
    ns = _run_blocks(tmp_path, monkeypatch)
    assert seen == ["TacoConfig", "DcvitConfig", "TransferConfig"]
    assert 0 <= ns["result"].report["compressed"]["top1"] <= 100
    assert ns["result"].report["sparsity"]["pruned_layers"]["sparsity"] == pytest.approx(
        0.9, abs=0.01)
    assert (tmp_path / "runs" / "library" / "stages").is_dir()
    assert ns["data"].class_ids.tolist() == [2, 3, 4, 7, 8]  # matched to the generalist's rows
    assert len(ns["pool_x"]) > 0 and "compressed" in ns["student"].report


@pytest.mark.slow
def test_readme_python_blocks_run_as_written(tmp_path, monkeypatch):
    ns = _run_blocks(tmp_path, monkeypatch)
    assert ns["result"].report["compressed"]["top1"] > 85
