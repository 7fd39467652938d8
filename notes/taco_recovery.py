"""Final-recovery variants for the TACO demo (issue #7), from the stages of a TACO-only run:

  python -m launch.taco --config.baselines="()" --config.latency_batch=0 --workdir=runs/exp/base
  PYTHONPATH=. .venv/bin/python notes/taco_recovery.py runs/exp/base <variant> ...

Restores the 90% pruned model (stage ``<tag>_prune_3``: pruned, BN re-estimated, before the final
recovery), runs the named final-recovery variant and prints top-1 on the 1,000 task test images.
Measurement only, not library code.
"""
import dataclasses
import sys
import time

from demo_task import cx, cy, norm, tc, teacher, vx, vy
from flax import nnx

from taco_jax.compress import stages
from taco_jax.prune import sequential
from taco_jax.train import batchnorm, fit

store = stages.StageStore(sys.argv[1] + "/stages")
TAG = "taco"


def start():
    s = nnx.clone(teacher)
    masks, _ = store.load(f"{TAG}_prune_3", s)
    return s, masks


def variant(name, *, bn_after=False, **kw):
    t = time.perf_counter()
    s, masks = start()
    pre = fit.evaluate(s, vx, vy, norm)["top1"]
    rc = dataclasses.replace(tc.recover, **kw)
    fit.fit(s, cx, cy, rc, norm, teacher=teacher, desc=name,
            constrain=lambda m: sequential.apply_masks(m, masks))
    post = fit.evaluate(s, vx, vy, norm)["top1"]
    extra = ""
    if bn_after:
        batchnorm.reestimate(s, cx, norm)
        extra = f"  after BN re-est. {fit.evaluate(s, vx, vy, norm)['top1']:.1f}"
    print(f"RESULT {name}: before {pre:.1f}  after {post:.1f}{extra}  "
          f"({time.perf_counter() - t:.0f}s)", flush=True)


VARIANTS = {
    "base": lambda: variant("base", bn_after=True),
    "lr3e-4": lambda: variant("lr3e-4", learning_rate=3e-4, bn_after=True),
    "steps400": lambda: variant("steps400", steps=400, bn_after=True),
    "ce0": lambda: variant("ce0", ce_weight=0.0, bn_after=True),
    "t1": lambda: variant("t1", temperature=1.0, bn_after=True),
    "wd": lambda: variant("wd", weight_decay=0.05, bn_after=True),
    "mix": lambda: variant("mix", mixup=1.0, bn_after=True),
    "mix_ce0": lambda: variant("mix_ce0", mixup=1.0, ce_weight=0.0, bn_after=True),
    "mix_ce0_400": lambda: variant("mix_ce0_400", mixup=1.0, ce_weight=0.0, steps=400,
                                   bn_after=True),
    "lr2e-3": lambda: variant("lr2e-3", learning_rate=2e-3),
    "lr4e-3": lambda: variant("lr4e-3", learning_rate=4e-3),
    "lr2e-3_400": lambda: variant("lr2e-3_400", learning_rate=2e-3, steps=400),
    "sgd": lambda: variant("sgd", optimizer="sgd", learning_rate=0.01, bn_after=True),
}

for name in sys.argv[2:]:
    VARIANTS[name]()
