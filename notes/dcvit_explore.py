"""DC-ViT exploration (issue #8): cut a few plans on a config variant's task, evaluate each before
and after one recovery (one seed), and time them all against the dense teacher in one
interleaved session. The sweep's own set-up (``dcvit_run._setup``: teacher, unlabeled images,
block ranking) and recovery; nothing here is a second implementation.

  PYTHONPATH=. .venv/bin/python notes/dcvit_explore.py VARIANT [all_classes] > runs/explore.jsonl
  PLANS="[(0, (0.0625, 0.0625, 0.0625, 0.0625))]" PYTHONPATH=. .venv/bin/python \
      notes/dcvit_explore.py sweep all_classes

VARIANT is a ``configs/dcvit/demo.py`` variant; ``all_classes`` makes the task the generalist's
whole 20-class label space (``config.task.classes = ()``) with 16 unlabeled images per class (320,
as many as the farm task's 64 × 5).

Plans are written in ranked-block terms like the sweep's grid: (attention-free blocks, MLP
fraction per block, least sensitive first; 0 removes the MLP); ("drop", n) drops the n least
sensitive blocks. ``PLANS`` (a Python literal) replaces the default list; ``RECOVERY_SEED``
(default: the config's seed) changes only the recovery's seed, as the sweep's seeds do.
"""
import ast
import dataclasses
import json
import os
import sys
import time

from absl import logging
from flax import nnx

from configs.dcvit import demo
from taco_jax.compress import dcvit, dcvit_run
from taco_jax.models import latency
from taco_jax.train import fit

PLANS = [(0, (0.75,) * 4), (0, (0.5,) * 4), (0, (0.25,) * 4), (0, (0.125,) * 4),
         (1, (0.5,) * 4), (2, ()), ("drop", 1), ("drop", 2)]
if os.environ.get("PLANS"):
    PLANS = ast.literal_eval(os.environ["PLANS"])

logging.set_verbosity(logging.WARNING)
config = demo.get_config(sys.argv[1])
if sys.argv[2:] == ["all_classes"]:
    config.task.classes = ()
    config.shots = 16
s = dcvit_run.parse(config)
setup, _ = dcvit_run._setup(config, s)
depth = len(setup.teacher.blocks)
print(json.dumps({"variant": sys.argv[1:], "dense": setup.dense["top1"],
                  "unlabeled": len(setup.ids), "test": len(setup.test_y),
                  "attn_order": setup.attn_order, "drop_order": setup.drop_order}), flush=True)
recover = dataclasses.replace(s.dcvit.recover,
                              seed=int(os.environ.get("RECOVERY_SEED", s.dcvit.recover.seed)))
batches = dcvit.calibration_batches(setup.images, setup.preprocess, s.dcvit.calibration_batch)
models, rows = [], []
for kind, arg in PLANS:
    plan = (dcvit.cut_plan(depth, setup.drop_order[:arg], 0.0) if kind == "drop"
            else dcvit.ranked_plan(setup.attn_order, kind, arg))
    start = time.time()
    cut = nnx.clone(setup.teacher)
    dcvit.apply_plan(cut, plan, batches, s.dcvit.prune)
    before = fit.evaluate(cut, setup.test_x, setup.test_y, setup.preprocess)["top1"]
    dcvit.recover(cut, setup.teacher, setup.images, recover, setup.preprocess,
                  block_outputs=s.dcvit.block_outputs, desc=plan.label())
    after = fit.evaluate(cut, setup.test_x, setup.test_y, setup.preprocess)["top1"]
    row = {"plan": plan.label(), "recovery_seed": recover.seed,
           "method": "block_drop" if kind == "drop" else "dcvit",
           "no_recovery": before, "top1": after, "s": round(time.time() - start),
           "load": round(os.getloadavg()[0], 1)}
    print(json.dumps(row), flush=True)
    models.append(cut)
    rows.append(row)
load = os.getloadavg()[0]
lats = latency.paired_latency(setup.teacher, models, setup.latency_x,
                                  repeats=config.latency.repeats)
for row, lat in zip(rows, lats, strict=True):
    print(json.dumps({**row, "reduction": round(100 * lat["reduction"], 1),
                      "latency_load": [round(load, 1), round(os.getloadavg()[0], 1)]}),
          flush=True)
