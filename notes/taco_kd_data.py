"""Is the few-shot recovery data-limited? (issue #7, session 5). Measurement only.

  PYTHONPATH=. .venv/bin/python notes/taco_kd_data.py WORKDIR STAGE [STAGE ...]
  STEPS=1000 POOLS=all PYTHONPATH=. .venv/bin/python notes/taco_kd_data.py WORKDIR STAGE

Restores each 90%-pruned stage (``<tag>_prune_3``: pruned, BN re-estimated, before the final
recovery) of a launcher workdir and runs the demo's final recovery (same steps, optimizer,
augmentation, KD + CE, masks held) twice: on the 160 few-shot images, as the pipeline does, and
on all of the task's training images (4,000: 800 per farm species), to see how far more data
for the same recovery would take each model. ``STEPS`` replaces the recovery's step count;
``POOLS=all`` runs the second arm only. Prints top-1 on the 1,000 task test images.
"""
import dataclasses
import os
import sys
import time

import numpy as np
from demo_task import cx, cy, data, recover_stage, tc

from taco_jax.compress import stages

store = stages.StageStore(sys.argv[1] + "/stages")
task = np.isin(data.train_labels, np.unique(cy))
pools = {"few-shot (160)": (cx, cy), f"all task train ({task.sum()})":
         (data.train_images[task], data.train_labels[task])}
if os.environ.get("POOLS") == "all":
    pools.pop("few-shot (160)")
recover = dataclasses.replace(tc.recover, steps=int(os.environ.get("STEPS", tc.recover.steps)))
for stage in sys.argv[2:]:
    for name, (x, y) in pools.items():
        t = time.perf_counter()
        pre, post = recover_stage(store, stage, x, y, recover)
        print(f"RESULT {stage} on {name}, {recover.steps} steps: before {pre:.1f}  "
              f"after {post:.1f}  ({time.perf_counter() - t:.0f}s)", flush=True)
