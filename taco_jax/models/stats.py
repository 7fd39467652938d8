"""Model size and compute: parameter counts and multiply-accumulates of a forward pass.

``forward_macs`` counts the MACs of every ``dot_general`` (linear layers, attention matmuls) and
``conv_general_dilated`` in the traced forward pass, read off the shapes, so structurally pruned
(narrower) layers count what they really cost. It is the convention of fvcore / the timm and
torchvision model cards, whose "FLOPs" are these MACs; norms, activations and softmax are not
counted.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax.extend.core import jaxprs_in_params


def param_count(model: nnx.Module) -> int:
    """Number of trainable parameters (BatchNorm statistics excluded)."""
    return sum(math.prod(p.shape) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


def _dot_macs(eqn) -> int:
    (contracting, _), _ = eqn.params["dimension_numbers"]
    lhs = eqn.invars[0].aval.shape
    return math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in contracting)


def _conv_macs(eqn) -> int:
    rhs = eqn.invars[1].aval.shape
    spec = eqn.params["dimension_numbers"].rhs_spec  # (out feature, in feature, spatial...)
    per_output = rhs[spec[1]] * math.prod(rhs[d] for d in spec[2:])
    return math.prod(eqn.outvars[0].aval.shape) * per_output


def _jaxpr_macs(jaxpr) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            total += _dot_macs(eqn)
        elif eqn.primitive.name == "conv_general_dilated":
            total += _conv_macs(eqn)
        for sub in jaxprs_in_params(eqn.params):
            total += _jaxpr_macs(sub)
    return total


def forward_macs(model: nnx.Module, input_shape: tuple[int, ...]) -> int:
    """MACs of ``model(x)`` for one float32 input of ``input_shape`` (batch included)."""
    graphdef, state = nnx.split(model)

    def forward(state, x):
        return nnx.merge(graphdef, state)(x)

    closed = jax.make_jaxpr(forward)(state, jax.ShapeDtypeStruct(input_shape, jnp.float32))
    return _jaxpr_macs(closed.jaxpr)
