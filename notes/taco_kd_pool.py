"""Does a task-agnostic unlabelled pool close the few-shot recovery's gap? (issue #7, session 6).
Measurement only.

  STEPS=1000 LR=1e-3 BATCH=64 MIX=none|concat|balanced FRACTION=0 \
    PYTHONPATH=. .venv/bin/python notes/taco_kd_pool.py WORKDIR STAGE...

Restores each 90%-pruned stage (``<tag>_prune_3``) of a launcher workdir and runs the demo's
final recovery (optimizer, augmentation, KD + CE, masks held) on the run's 160 labelled
few-shot images (``few_shot_ids.json``; the recovery seed is the run's) plus, unlabelled (KD
only), the embedded dataset's training images of the 15 *other* classes (5 other animals + 10
digits) and a seeded FRACTION of each farm species' (``pool.pool_subset``, as the transfer
launcher's generic pool; default 0); RETRIEVE=N keeps only the N pool images nearest to the
few-shot set in the teacher's embedding (``retrieval.retrieve``, as the transfer launcher's
"retrieval" set; the few-shot images themselves are left out). MIX=concat samples uniformly
from the union; MIX=balanced repeats the few-shot set until it is half of it (half of every batch in
expectation; ``fit``'s ``unlabelled_share=0.5``, which the launcher uses, splits each batch
exactly); MIX=none is the control (the few-shot images alone, as the
pipeline does without a pool). Prints top-1 on the task test set.
"""
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from demo_task import config, data, norm, recover_stage, tc, teacher

from taco_jax.compress import retrieval, stages
from taco_jax.data import pool
from taco_jax.data.task import Task

workdir = Path(sys.argv[1])
seed = json.loads((workdir / "config.json").read_text())["seed"]
ids = np.asarray(json.loads((workdir / "few_shot_ids.json").read_text()))
cx, cy = data.train_images[ids], data.train_labels[ids]
full = Task(config.task.dataset, (), config.task.data_dir or None)
px, py = full.load("train")
mix = os.environ.get("MIX", "concat")
kept = pool.pool_subset(py, full.class_names(), list(config.task.classes),
                        float(os.environ.get("FRACTION", 0)))
px, py = px[kept][:0 if mix == "none" else None], py[kept][:0 if mix == "none" else None]
if os.environ.get("RETRIEVE") and len(px):
    others = retrieval.drop_query_copies(px, cx)
    px, py = px[others], py[others]
    chosen = retrieval.retrieve(retrieval.embed(teacher, cx, norm),
                                retrieval.embed(teacher, px, norm), int(os.environ["RETRIEVE"]))
    px, py = px[chosen], py[chosen]
print("pool:", pool.composition(np.arange(len(py)), py, full.class_names(),
                                list(config.task.classes)) if len(py) else "none", flush=True)
reps = max(1, len(px) // len(cx)) if mix == "balanced" else 1
x = np.concatenate([np.tile(cx, (reps, 1, 1, 1)), px])
y = np.concatenate([np.tile(cy, reps), np.full(len(px), -1, cy.dtype)])
print(f"seed {seed}, pool: {len(px)} unlabelled images; few-shot x{reps}", flush=True)
store = stages.StageStore(workdir / "stages")
recover = dataclasses.replace(tc.recover, steps=int(os.environ.get("STEPS", tc.recover.steps)),
                              learning_rate=float(os.environ.get("LR", tc.recover.learning_rate)),
                              batch_size=int(os.environ.get("BATCH", tc.recover.batch_size)),
                              seed=seed)
for stage in sys.argv[2:]:
    t = time.perf_counter()
    pre, post = recover_stage(store, stage, x, y, recover)
    print(f"RESULT {workdir.name} seed {seed} {stage} pool={mix}, {recover.steps} steps, "
          f"lr {recover.learning_rate:g}, batch {recover.batch_size}: "
          f"before {pre:.1f}  after {post:.1f}  ({time.perf_counter() - t:.0f}s)", flush=True)
