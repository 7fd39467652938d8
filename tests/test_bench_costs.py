"""The cost benchmarks run end to end on a mini model and print their FLOP-floor lines."""

import re
import sys

import pytest

from taco_jax.bench import prune_model, recover_step


@pytest.mark.parametrize("bench, args, expected", [
    (prune_model, ["--model=resnet_mini", "--images=6", "--batch=4", "--sparsity=0.5"],
     r"total [\d.]+s  hessians [\d.]+s .*\nFLOP floor [\d.]+s \(.* GFLOP/s measured\): total is"),
    (recover_step, ["--model=vit_mini", "--batch=4", "--microbatch=2", "--steps=2"],
     r"step [\d.]+s \(median of 2; .*FLOP floor [\d.]+s .*x the floor"),
])
def test_cost_benchmark_prints_its_floor(bench, args, expected, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [bench.__name__, *args])
    bench.main()
    assert re.search(expected, capsys.readouterr().out)


def test_recover_step_refuses_more_devices_than_it_has(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["recover_step", "--model=vit_mini", "--devices=999"])
    with pytest.raises(SystemExit, match="--devices=999: this process has"):
        recover_step.main()
