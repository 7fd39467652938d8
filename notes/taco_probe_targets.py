"""How soft are the KD targets of the demo's two kinds of dense task teacher? (issue #7,
session 8). Measurement only.

  PYTHONPATH=. .venv/bin/python notes/taco_probe_targets.py

For the restricted generalist head and for linear probes (l2 1e-4, 1e-3, 1e-2, 1e-1, fit on the
seed-0 few shots), prints over the 160 few-shot images and over 1,000 test images: the mean
probability of the top class at the recovery's KD temperature T = 4 and at T = 1, the mean
entropy of the T = 4 targets (nats; ln 5 = 1.61 is uniform), and test top-1. Then, for each
l2 of the probe's cross-validation grid, the 5-fold held-out cross-entropy on the few shots
(mean and standard error over the folds, the folds ``adapt.cross_validated_l2`` uses) and the
held-out accuracy.
"""
import jax
import jax.numpy as jnp
import numpy as np
from demo_task import cx, cy, data, model, norm, tc, teacher, vx, vy
from flax import nnx

from taco_jax.compress import adapt
from taco_jax.train import fit


def softness(logits: np.ndarray, t: float) -> tuple[float, float]:
    p = np.asarray(jax.nn.softmax(logits / t, axis=1), np.float64)
    return float(p.max(1).mean()), float(-(p * np.log(np.maximum(p, 1e-30))).sum(1).mean())


teachers = {"restricted head": teacher}
for l2 in (1e-4, 1e-3, 1e-2, 1e-1):
    probe, _ = adapt.linear_probe(nnx.clone(model), cx, cy, len(data.class_names), norm, l2=l2)
    teachers[f"probe l2={l2:g}"] = probe
T = tc.recover.temperature
for name, t in teachers.items():
    row = [name]
    for x in (cx, vx):
        logits = fit.predict_logits(t, x, norm)
        top_t, entropy = softness(logits, T)
        top_1, _ = softness(logits, 1.0)
        row.append(f"top-class p {top_t:.3f} (T={T:g}) / {top_1:.3f} (T=1), entropy "
                   f"{entropy:.3f}")
    acc = fit.evaluate(t, vx, vy, norm)["top1"]
    print(f"{row[0]:>16} | few shots: {row[1]} | test: {row[2]} | test top-1 {acc:.1f}",
          flush=True)

features = fit.predict(model, cx, norm, output=adapt._features)
fold = np.empty(len(cy), int)
rng = np.random.default_rng(0)  # as cross_validated_l2
for c in np.unique(cy):
    members = rng.permutation(np.flatnonzero(cy == c))
    fold[members] = np.arange(len(members)) % 5
x, y = jnp.asarray(features), jnp.asarray(cy)
_, means = adapt.cross_validated_l2(features, cy, len(data.class_names))
for l2 in adapt.L2_GRID:
    losses, accs = [], []
    for k in range(5):
        train = jnp.asarray(fold != k, jnp.float32)
        p, *_ = adapt._logistic_regression(x, y, train, len(data.class_names), jnp.float32(l2),
                                           jnp.float32(1e-5), 1000)
        losses.append(float(adapt.logistic_objective(p, x, y, 1.0 - train, 0.0)))
        pred = np.argmax(features @ np.asarray(p["w"]) + np.asarray(p["b"]), 1)
        accs.append(np.mean(pred[fold == k] == cy[fold == k]))
    assert abs(np.mean(losses) - means[l2]) < 1e-6  # the library's own figure
    print(f"cv l2={l2:g}: held-out CE {np.mean(losses):.4f} ± {np.std(losses, ddof=1) / 5**0.5:.4f}"
          f", accuracy {np.mean(accs):.3f}", flush=True)
