"""TACO vs magnitude, one shot, both at the same given per-layer levels (issue #7, measurement).

  PYTHONPATH=. .venv/bin/python notes/taco_levels.py STAGE_INFO_JSON PATTERN WORKDIR

The levels are those a finished prune stage chose (``<workdir>/stages/<tag>_prune_<k>/info.json``
of a launcher run, e.g. magnitude's global allocation); both methods prune to them in one step
(uniform allocation, the levels as overrides, the stem dense) and recover for the demo's whole
400-step budget. Separates the allocation's part of a gap from the solver's. Results in
``WORKDIR/report.json`` (``compressed`` = TACO, ``baselines.magnitude``).
"""
import json
import sys
from pathlib import Path

from absl import logging

from configs.taco.demo import get_config
from taco_jax.compress import run

info, pattern, workdir = sys.argv[1:4]
levels = {"conv1": 0.0, **{la["name"]: round(la["sparsity"], 4)
                           for la in json.loads(Path(info).read_text())["layers"]}}
c = get_config(f"pattern={pattern}")
c.prune.allocation = "uniform"
c.prune.overrides = tuple(levels.items())
c.schedule = ()
c.recover.steps = 400
c.baselines = ("magnitude",)
c.latency_batch = 0
logging.set_verbosity(logging.INFO)
run.run_taco(c, workdir)
report = json.loads((Path(workdir) / "report.json").read_text())
print("RESULT", {k: report[k]["top1"] for k in ("compressed", "compressed_before_recovery")},
      report["baselines"]["magnitude"]["compressed"]["top1"], flush=True)
