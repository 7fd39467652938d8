"""Adapt a generalist classifier to a task: keep only the task's rows of its classifier."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from taco_jax.models import get_layer, set_layer


def restrict_head(model: nnx.Module, class_ids: np.ndarray) -> nnx.Module:
    """Replace the classifier ``model.head_name`` (Linear D→C) by one D→len(class_ids) whose
    output j is the source class ``class_ids[j]``: the dense task teacher, no training needed.
    """
    head = get_layer(model, model.head_name)
    if not isinstance(head, nnx.Linear):
        raise TypeError(f"{model.head_name!r} is a {type(head).__name__}, expected nnx.Linear")
    n_src = head.kernel.value.shape[1]
    ids = np.asarray(class_ids)
    if ids.ndim != 1 or len(ids) == 0 or ids.min() < 0 or ids.max() >= n_src:
        raise ValueError(f"class ids {ids.tolist()} must index the {n_src} source classes")
    new = nnx.Linear(head.in_features, len(ids), use_bias=head.use_bias, rngs=nnx.Rngs(0))
    new.kernel.value = jnp.asarray(head.kernel.value)[:, ids]
    if head.use_bias:
        new.bias.value = jnp.asarray(head.bias.value)[ids]
    set_layer(model, model.head_name, new)
    return model
