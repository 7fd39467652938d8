"""Does pruning toward the dense model's outputs help TACO at 90%? (issue #7, measurement only)

  PYTHONPATH=. .venv/bin/python notes/taco_dense_targets.py [sparsity|STAGE_INFO_JSON [recover]]

Layer by layer in forward order, uniform sparsity (stem dense, as the demo), SparseGPT on the
160 few-shot images of the demo task. ``student`` is the usual sequential objective
‖W X_p − Ŵ X_p‖² (inputs X_p from the already-pruned model); ``dense`` targets the dense
model's outputs, ‖W X_d − Ŵ X_p‖²: with W' = W X_dᵀX_p (X_pᵀX_p + λI)⁻¹ (least squares) this is
‖W' X_p − Ŵ X_p‖² + const, so SparseGPT prunes W' with the same Hessian. Prints top-1 before
recovery, after BN re-estimation on the calibration images; with ``recover``, also after the
demo's KD recovery (one shot: 400 steps, masks held).
"""
import dataclasses
import json
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from demo_task import batches, cx, cy, norm, tc, teacher, vx, vy
from flax import nnx

from taco_jax.models.paths import get_layer, set_layer
from taco_jax.prune import hessian, sequential
from taco_jax.prune.layout import kernel_from_matrix, layer_inputs, layer_matrix
from taco_jax.prune.solver import prune_layer
from taco_jax.train import batchnorm, fit

ARG = sys.argv[1] if len(sys.argv) > 1 else "0.9"
if ARG.endswith(".json"):  # per-layer sparsities of a finished prune stage (global allocation)
    PER_LAYER = {la["name"]: la["sparsity"] for la in json.loads(Path(ARG).read_text())["layers"]}
    LABEL = "allocated"
else:
    PER_LAYER, LABEL = None, f"uniform {float(ARG):.0%}"
RECOVER = sys.argv[2:] == ["recover"]
names = [n for n in sequential.default_layers(teacher, tc.prune) if n != "conv1"]


def inputs(m, name):
    layer = get_layer(m, name)
    got = []
    set_layer(m, name, hessian.Probe(layer, lambda v: got.append(
        np.asarray(layer_inputs(layer, v))[:, 0].astype(np.float64))))
    try:
        for b in batches:
            m(b)
    finally:
        set_layer(m, name, layer)
    return np.concatenate(got)


def run_variant(target: str) -> str:
    s = nnx.clone(teacher)
    s.eval()
    for name in names:
        layer = get_layer(s, name)
        xp = inputs(s, name)
        H = xp.T @ xp
        W = np.asarray(layer_matrix(layer))[0].astype(np.float64)
        if target == "dense":
            xd = inputs(teacher, name)
            damp = 0.01 * np.mean(np.diag(H)) * np.eye(len(H))
            W = np.linalg.solve(H + damp, (W @ xd.T @ xp).T).T
        W1, _, _ = prune_layer(jnp.asarray(W, jnp.float32), jnp.asarray(2 * H / len(xp),
                               jnp.float32), "unstructured",
                               PER_LAYER[name] if PER_LAYER else float(ARG))
        layer.kernel.value = kernel_from_matrix(W1[None], layer.kernel.value.shape)
    batchnorm.reestimate(s, cx, norm)
    out = f"before recovery {fit.evaluate(s, vx, vy, norm)['top1']:.1f}"
    if RECOVER:
        masks = {n: np.asarray(get_layer(s, n).kernel.value) != 0 for n in names}
        fit.fit(s, cx, cy, dataclasses.replace(tc.recover, steps=400), norm, teacher=teacher,
                constrain=lambda m: sequential.apply_masks(m, masks), desc=target)
        out += f", after recovery {fit.evaluate(s, vx, vy, norm)['top1']:.1f}"
    return out


for target in ("student", "dense"):
    print(f"RESULT {LABEL} targets={target}: {run_variant(target)}", flush=True)
