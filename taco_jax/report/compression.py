"""Parameter and non-zero counts of a (masked) model, for reports."""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from taco_jax.models import get_layer
from taco_jax.models.stats import forward_macs
from taco_jax.prune.allocate import positions_per_image


def param_counts(model: nnx.Module) -> tuple[int, int]:
    """(parameters, non-zero parameters) over every nnx.Param of ``model``."""
    leaves = [np.asarray(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param))]
    return sum(int(x.size) for x in leaves), sum(int(np.count_nonzero(x)) for x in leaves)


def summarize(model: nnx.Module, masks: dict[str, np.ndarray]) -> dict:
    """Counts over the masked layers and over the whole model (every nnx.Param).

    ``masks`` maps a layer name to a bool mask of its kernel (True = kept). Non-zeros are counted
    from the weights themselves, so a mask that was not held shows up here.
    """
    layer_params = layer_nonzero = 0
    per_layer = {}
    for name in masks:
        kernel = np.asarray(get_layer(model, name).kernel.value)
        nnz = int(np.count_nonzero(kernel))
        per_layer[name] = {"params": int(kernel.size), "nonzero": nnz,
                           "sparsity": 1 - nnz / kernel.size}
        layer_params += kernel.size
        layer_nonzero += nnz
    total, total_nnz = param_counts(model)
    return {
        "pruned_layers": {"params": int(layer_params), "nonzero": int(layer_nonzero),
                          "sparsity": 1 - layer_nonzero / max(layer_params, 1),
                          "compression": layer_params / max(layer_nonzero, 1)},
        "model": {"params": total, "nonzero": total_nnz,
                  "compression": total / max(total_nnz, 1)},
        "per_layer": per_layer,
    }


def macs(model: nnx.Module, masks: dict[str, np.ndarray], image_shape: tuple[int, ...]) -> dict:
    """Multiply-accumulates per image: ``dense`` (every weight, ``models.stats.forward_macs``) and
    ``sparse`` (zero weights of the masked layers skipped: each zero saves one MAC per output
    position), and their ratio. ``image_shape`` is (H, W, C)."""
    dense = forward_macs(model, (1, *image_shape))
    positions = positions_per_image(model, np.zeros((1, *image_shape), np.float32), list(masks))
    saved = 0
    for name in masks:
        kernel = np.asarray(get_layer(model, name).kernel.value)
        saved += positions[name] * int(kernel.size - np.count_nonzero(kernel))
    return {"dense": int(dense), "sparse": int(dense - saved),
            "reduction": dense / max(dense - saved, 1)}


def size(dense: nnx.Module, model: nnx.Module, masks: dict[str, np.ndarray],
         image_shape: tuple[int, ...]) -> dict:
    """What the compressed ``model`` saves against ``dense``, whether by zeros (``masks``) or by
    smaller shapes (structured cuts): parameters, non-zero parameters and multiply-accumulates
    per image (zeros of the masked layers skipped), each {"dense", "compressed", "reduction"}
    (reduction = dense / compressed). ``image_shape`` is (H, W, C)."""
    (p_dense, nz_dense), (p_model, nz_model) = param_counts(dense), param_counts(model)
    m_dense = forward_macs(dense, (1, *image_shape))
    m_model = macs(model, masks, image_shape)["sparse"]
    row = lambda a, b: {"dense": int(a), "compressed": int(b), "reduction": a / max(b, 1)}
    return {"params": row(p_dense, p_model), "nonzero": row(nz_dense, nz_model),
            "macs": row(m_dense, m_model)}
