"""Ablations for the TACO demo (issue #7), each variant named on the command line:

  PYTHONPATH=. .venv/bin/python notes/taco_ablation.py A_sg A_global C_global ...

Loads the shipped generalist, the demo task and its few-shot set once, then runs each named
variant (prune, optionally recover) and prints top-1 on the 1,000 task test images. The A_*
variants monkeypatch the solver's Hessian collection (centering, BN re-estimation per group):
measurement only, not library code.
"""
import dataclasses
import sys
import time

import jax.numpy as jnp
import numpy as np
from demo_task import batches, cx, cy, data, model, norm, tc, teacher, vx, vy
from flax import nnx

from taco_jax.models.paths import get_layer, set_layer
from taco_jax.prune import allocate, hessian, sequential
from taco_jax.prune.layout import layer_inputs
from taco_jax.train import batchnorm, fit

print("dense", fit.evaluate(teacher, vx, vy, norm)["top1"], flush=True)


def prune(method="sparsegpt", **kw):
    s = nnx.clone(teacher)
    cfg = dataclasses.replace(tc.prune, method=method, **kw)
    res = sequential.prune_model(s, batches, cfg)
    return s, res.masks


def recover(s, masks, **kw):
    rc = dataclasses.replace(tc.recover, **kw)
    fit.fit(s, cx, cy, rc, norm, teacher=teacher,
            constrain=lambda m: sequential.apply_masks(m, masks), desc="rec")
    return fit.evaluate(s, vx, vy, norm)["top1"]


def report(name, s, masks, rec_kw=None):
    t = time.perf_counter()
    pre = fit.evaluate(s, vx, vy, norm)["top1"]
    post = recover(s, masks, **(rec_kw or {}))
    print(f"RESULT {name}: before {pre:.1f}  after {post:.1f}  ({time.perf_counter() - t:.0f}s)",
          flush=True)


def masked_original(masks):
    s = nnx.clone(teacher)
    sequential.apply_masks(s, masks)
    return s


_collect = sequential.collect_hessians
MODE = {"center": False, "bnseq": False}


def _means(model, names):
    out = {}
    for n in names:
        layer = get_layer(model, n)
        acc = []
        set_layer(model, n, hessian.Probe(layer, lambda v, la=layer, acc=acc: acc.append(
            np.asarray(layer_inputs(la, v)).sum(0))))
        try:
            cols = sum(int(np.prod(b.shape[:3])) for b in batches)
            for b in batches:
                model(b)
        finally:
            set_layer(model, n, layer)
        n_cols = sum(layer_inputs(layer, b[:1]).shape[0] * len(b) for b in batches)
        out[n] = sum(acc) / n_cols
        del cols
    return out


def patched_collect(model, bs, names, mesh=None):
    names = list(names)
    if MODE["bnseq"]:
        batchnorm.reestimate(model, np.concatenate([np.asarray(b) for b in bs]), lambda x: x)
    H = _collect(model, bs, names, mesh=mesh)
    if MODE["center"]:
        mu = _means(model, names)
        for n in names:
            m = jnp.asarray(mu[n])  # (G, k)
            outer = 2 * jnp.einsum("gi,gj->gij", m, m)
            H[n] = H[n] - (outer[0] if H[n].ndim == 2 else outer)
    return H


sequential.collect_hessians = patched_collect
allocate.collect_hessians = patched_collect


def pre(name, s):
    a = fit.evaluate(s, vx, vy, norm)["top1"]
    batchnorm.reestimate(s, cx, norm)
    b = fit.evaluate(s, vx, vy, norm)["top1"]
    print(f"PRE {name}: before recovery {a:.1f}, after BN re-estimation {b:.1f}", flush=True)


def prevariant(name, method="sparsegpt", center=False, bnseq=False, **kw):
    MODE.update(center=center, bnseq=bnseq)
    t = time.perf_counter()
    s, m = prune(method, **kw)
    pre(name + f" ({time.perf_counter() - t:.0f}s)", s)
    return s, m


VARIANTS = {
    "A_sg": lambda: prevariant("sg"),
    "A_mag": lambda: prevariant("mag", "magnitude"),
    "A_center": lambda: prevariant("center", center=True),
    "A_bnseq": lambda: prevariant("bnseq", bnseq=True),
    "A_center_bnseq": lambda: prevariant("center_bnseq", center=True, bnseq=True),
    "A_global": lambda: prevariant("global", allocation="global"),
    "A_center_bnseq_global": lambda: prevariant("center_bnseq_global", center=True, bnseq=True,
                                                allocation="global"),
}


def variant(f):
    VARIANTS[f.__name__] = f
    return f


@variant
def sg():
    s, m = prune()
    report("sg", s, m)


@variant
def mag():
    s, m = prune("magnitude")
    report("mag", s, m)


@variant
def sg_origw():
    _, m = prune()
    report("sg_origw", masked_original(m), m)


@variant
def sg_global():
    s, m = prune(allocation="global")
    report("sg_global", s, m)


@variant
def sg_row():
    s, m = prune(pattern="unstructured-row")
    report("sg_row", s, m)


def gradual(name, baselines=(), schedule=(0.5, 0.75), between=100, final=200, prune_kw=None,
            rec_kw=None):
    from taco_jax.compress import taco
    cfg = dataclasses.replace(
        tc, schedule=schedule, schedule_steps=between, baselines=baselines, latency_batch=0,
        prune=dataclasses.replace(tc.prune, **(prune_kw or {})),
        recover=dataclasses.replace(tc.recover, steps=final, **(rec_kw or {})))
    t = time.perf_counter()
    r = taco.compress(model, data, cfg).report
    steps = [(h["sparsity"], h["before_recovery"]["top1"], h["after_recovery"]["top1"])
             for h in r["schedule"]]
    print(f"RESULT {name}: taco {r['compressed']['top1']:.1f} steps {steps} "
          f"sparsity {r['sparsity']['pruned_layers']['sparsity']:.4f} "
          f"({time.perf_counter() - t:.0f}s)", flush=True)
    for b, v in r["baselines"].items():
        print(f"RESULT {name} baseline {b}: {v}", flush=True)


VARIANTS.update({
    "D_grad4": lambda: gradual("grad global 50/75/85/90 75x3+175", schedule=(0.5, 0.75, 0.85),
                               between=75, final=175, prune_kw={"allocation": "global"}),
    "D_grad4_mix": lambda: gradual("grad global 50/75/85/90 75x3+175 mixup1",
                                   schedule=(0.5, 0.75, 0.85), between=75, final=175,
                                   prune_kw={"allocation": "global"}, rec_kw={"mixup": 1.0}),
    "C_global_mix": lambda: gradual("one-shot global 400 mixup1", schedule=(), final=400,
                                    prune_kw={"allocation": "global"}, rec_kw={"mixup": 1.0}),
    "C_global": lambda: gradual("one-shot global 400", schedule=(), final=400,
                                prune_kw={"allocation": "global"}),
    "B_grad": lambda: gradual("grad 50/75/90 100+100+200"),
    "B_grad_global": lambda: gradual("grad global", prune_kw={"allocation": "global"}),
    "B_grad_mag": lambda: gradual("grad mag", prune_kw={"method": "magnitude"}),
})

if __name__ == "__main__":
    for v in sys.argv[1:]:
        VARIANTS[v]()
