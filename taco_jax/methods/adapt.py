"""Adapt a generalist classifier to a task: the dense task teacher that TACO compresses.

Two ways: ``restrict_head`` keeps only the task's rows of the classifier (the
task's classes are among the generalist's; no training), and ``linear_probe`` fits a new
classifier on the frozen features of the few labelled task images (any task). ``task_teacher``
is the one entry every method uses: "auto" restricts when the task data names the model's rows
of its classes (``TaskData.class_ids``), and probes otherwise.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import nnx

from taco_jax import distributed
from taco_jax.models import get_layer, set_layer
from taco_jax.train import fit

ADAPTS = ("auto", "restrict", "linear_probe")


def validate(how: str) -> str:
    """``how`` when it is one of ``ADAPTS``; ValueError naming it otherwise."""
    if how not in ADAPTS:
        raise ValueError(f"adapt must be one of {ADAPTS}, got {how!r}")
    return how


def resolve(how: str, class_ids: np.ndarray | None) -> str:
    """``how`` ("auto", "restrict" or "linear_probe") as the one that runs: "auto" restricts
    when ``class_ids`` (the model's classifier row of each task class) is known, else probes.
    ValueError for an unknown ``how`` or "restrict" without ``class_ids``."""
    if validate(how) == "auto":
        return "linear_probe" if class_ids is None else "restrict"
    if how == "restrict" and class_ids is None:
        raise ValueError("adapt='restrict' needs TaskData.class_ids (the model's classifier "
                         "row of each task class); for classes the model does not have, "
                         "use adapt='linear_probe' (or 'auto')")
    return how


def task_teacher(model: nnx.Module, class_ids: np.ndarray | None, images: np.ndarray,
                 labels: np.ndarray, num_classes: int, preprocess: fit.Preprocess, *,
                 how: str = "auto", l2: float | None = None) -> tuple[nnx.Module, dict]:
    """The dense task teacher: a copy of ``model`` with a ``num_classes``-way classifier, made
    as ``resolve(how, class_ids)`` says: the model's rows ``class_ids`` (K,), or a linear probe
    on the labelled few-shot ``images`` (N, H, W, C) uint8 / ``labels`` (N,). ``model`` is not
    modified. Returns (teacher, info: "method", "seconds", the probe's fit for a probe)."""
    method = resolve(how, class_ids)
    start = time.perf_counter()
    if method == "restrict":
        logging.info("adapt: restrict the classifier to the task's %d classes (rows %s)",
                     len(class_ids), np.asarray(class_ids).tolist())
        teacher = restrict_head(nnx.clone(model), class_ids)
        return teacher, {"method": method, "seconds": time.perf_counter() - start}
    logging.info("adapt: linear probe of a new %d-class head on %d few-shot images%s",
                 num_classes, len(images), "" if how != "auto" else
                 " (the model's classes do not name the task's)")
    teacher, info = linear_probe(nnx.clone(model), images, labels, num_classes, preprocess,
                                 l2=l2)
    distributed.broadcast_model(teacher)
    logging.info("linear probe: l2 %g%s, %d L-BFGS steps, objective %.4f, gradient norm %.1e, "
                 "few-shot top-1 %.1f%%", info["l2"],
                 " (cross-validated)" if "cv_loss" in info else "", info["steps"],
                 info["objective"], info["grad_norm"], info["train_top1"])
    return teacher, {"method": method, **info, "seconds": time.perf_counter() - start}


def restrict_head(model: nnx.Module, class_ids: np.ndarray) -> nnx.Module:
    """Replace the classifier ``model.head_name`` (Linear D→C) by one D→len(class_ids) whose
    output j is the source class ``class_ids[j]``: the dense task teacher, no training needed.
    """
    head = _head(model)
    n_src = head.kernel.value.shape[1]
    ids = np.asarray(class_ids)
    if ids.ndim != 1 or len(ids) == 0 or ids.min() < 0 or ids.max() >= n_src:
        raise ValueError(f"class ids {ids.tolist()} must index the {n_src} source classes")
    kernel = jnp.asarray(head.kernel.value)[:, ids]
    bias = jnp.asarray(head.bias.value)[ids] if head.use_bias else None
    _set_head(model, kernel, bias)
    return model


def linear_probe(model: nnx.Module, images: np.ndarray, labels: np.ndarray, num_classes: int,
                 preprocess: fit.Preprocess, *, l2: float | None = None, max_steps: int = 1000,
                 tol: float = 1e-5) -> tuple[nnx.Module, dict]:
    """Replace the classifier by a new Linear D→num_classes fit on the frozen features
    (``model.forward_features``, (N, D)) of labelled images (N,H,W,C) uint8, labels (N,) in
    [0, num_classes): multinomial logistic regression, mean cross-entropy + l2/2·‖W‖² (a
    convex problem; few images are separable, so ``l2`` keeps W finite), solved by L-BFGS
    until the gradient norm is below ``tol`` or ``max_steps``. ``l2=None``: chosen from
    ``L2_GRID`` by cross-validation on the labelled images (``cross_validated_l2``).
    Returns (model, info: l2, steps, final objective and gradient norm, training top-1, and
    the held-out loss of every l2 tried)."""
    labels = np.asarray(labels)
    if len(images) != len(labels) or len(labels) == 0:
        raise ValueError(f"need as many labels as images (> 0), got {len(images)} and "
                         f"{len(labels)}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must be in [0, {num_classes}), got {labels.min()}.."
                         f"{labels.max()}")
    if l2 is not None and l2 <= 0:
        raise ValueError(f"l2 must be > 0 (few labelled images are separable), got {l2}")
    head = _head(model)
    features = fit.predict(model, images, preprocess, output=_features)
    info = {}
    if l2 is None:
        l2, info["cv_loss"] = cross_validated_l2(features, labels, num_classes,
                                                 max_steps=max_steps, tol=tol)
    params, steps, value, grad_norm = _logistic_regression(
        jnp.asarray(features), jnp.asarray(labels), jnp.ones(len(labels)), num_classes,
        jnp.float32(l2), jnp.float32(tol), max_steps)
    _set_head(model, params["w"], params["b"] if head.use_bias else None)
    train_top1 = float(np.mean(np.argmax(features @ np.asarray(params["w"]) + np.asarray(
        params["b"]), 1) == labels) * 100)
    return model, {"l2": float(l2), "steps": int(steps), "objective": float(value),
                   "grad_norm": float(grad_norm), "train_top1": train_top1, **info}


L2_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)


def cross_validated_l2(features: np.ndarray, labels: np.ndarray, num_classes: int, *,
                       grid: tuple[float, ...] = L2_GRID, folds: int = 5, seed: int = 0,
                       max_steps: int = 1000, tol: float = 1e-5) -> tuple[float, dict]:
    """The ``grid`` value of l2 whose probe has the least mean held-out cross-entropy over
    ``folds`` class-stratified folds of (features (N, D), labels (N,)) (fewer folds when a
    class has fewer examples; at least two per class needed). Returns (l2, {l2: loss})."""
    counts = np.bincount(labels, minlength=num_classes)
    folds = min(folds, int(counts[counts > 0].min()))
    if folds < 2:
        raise ValueError("cross-validating the probe's l2 needs >= 2 labelled images per "
                         f"class, got {counts.tolist()}; pass l2 explicitly")
    rng = np.random.default_rng(seed)
    fold = np.empty(len(labels), int)
    for c in np.flatnonzero(counts):
        members = rng.permutation(np.flatnonzero(labels == c))
        fold[members] = np.arange(len(members)) % folds
    x, y = jnp.asarray(features), jnp.asarray(labels)
    losses_by_l2 = {}
    for l2 in grid:
        held_out = []
        for k in range(folds):
            train = jnp.asarray(fold != k, jnp.float32)
            params, *_ = _logistic_regression(x, y, train, num_classes, jnp.float32(l2),
                                              jnp.float32(tol), max_steps)
            held_out.append(float(logistic_objective(params, x, y, 1.0 - train, 0.0)))
        losses_by_l2[l2] = float(np.mean(held_out))
    return min(losses_by_l2, key=losses_by_l2.get), losses_by_l2


def logistic_objective(params: dict, x: jax.Array, y: jax.Array, weights: jax.Array,
                       l2: jax.Array) -> jax.Array:
    """Weighted mean softmax cross-entropy of ``x @ w + b`` against ``y`` (weights (N,), e.g. a
    fold's 0/1 membership) plus ``l2/2·‖w‖²``."""
    ce = optax.softmax_cross_entropy_with_integer_labels(x @ params["w"] + params["b"], y)
    return jnp.sum(weights * ce) / jnp.sum(weights) + 0.5 * l2 * jnp.sum(params["w"] ** 2)


@functools.partial(jax.jit, static_argnames=("num_classes", "max_steps"))
def _logistic_regression(x, y, weights, num_classes, l2, tol, max_steps):
    params = {"w": jnp.zeros((x.shape[1], num_classes), x.dtype),
              "b": jnp.zeros((num_classes,), x.dtype)}
    objective = functools.partial(logistic_objective, x=x, y=y, weights=weights, l2=l2)
    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(objective)

    def step(carry):
        params, state = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = opt.update(grad, state, params, value=value, grad=grad,
                                    value_fn=objective)
        return optax.apply_updates(params, updates), state

    def running(carry):
        _, state = carry
        count = optax.tree_utils.tree_get(state, "count")
        grad = optax.tree_utils.tree_get(state, "grad")
        return (count == 0) | ((count < max_steps) & (optax.tree_utils.tree_l2_norm(grad) > tol))

    params, state = jax.lax.while_loop(running, step, (params, opt.init(params)))
    value, grad = jax.value_and_grad(objective)(params)
    return (params, optax.tree_utils.tree_get(state, "count"), value,
            optax.tree_utils.tree_l2_norm(grad))


def _features(model: nnx.Module, x: jax.Array) -> jax.Array:
    return model.forward_features(x)


def _head(model: nnx.Module) -> nnx.Linear:
    head = get_layer(model, model.head_name)
    if not isinstance(head, nnx.Linear):
        raise TypeError(f"{model.head_name!r} is a {type(head).__name__}, expected nnx.Linear")
    return head


def _set_head(model: nnx.Module, kernel: jax.Array, bias: jax.Array | None) -> None:
    """A new Linear D→K head with these weights (kernel (D, K), bias (K,) or None)."""
    head = _head(model)
    new = nnx.Linear(head.in_features, kernel.shape[1], use_bias=bias is not None,
                     rngs=nnx.Rngs(0))
    new.kernel.value = jnp.asarray(kernel, head.kernel.value.dtype)
    if bias is not None:
        new.bias.value = jnp.asarray(bias, head.bias.value.dtype)
    set_layer(model, model.head_name, new)
