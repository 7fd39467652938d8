"""Pruning toward a reference model's outputs ("dense targets").

Sequential pruning solves each layer on inputs X (k, n) that come through the already-pruned
layers before it, and by default asks the pruned weights Ŵ to reproduce the layer's own outputs
on them, ‖W X − Ŵ X‖². That objective forgets the error the upstream layers already made. Asking
instead for the reference's (dense model's) outputs on its own inputs X_r,

    min ‖W_r X_r − Ŵ X‖²  =  min ‖W' X − Ŵ X‖² + const,
    W' = (W_r C + λ W) (H + λI)⁻¹,   H = 2XXᵀ/n,  C = 2X_r Xᵀ/n  (``hessian.collect_paired``),

corrects that error inside each layer: the usual solver then prunes W' with the same H. The ridge
term pulls W' toward the layer's current weights W where the calibration data do not decide it
(λ = ``percdamp``·mean diag H, the solver's own damping), so W' = W exactly when the inputs are
the reference's (X = X_r, W = W_r): the first layer, or an unpruned model.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from taco_jax.prune.solver import fill_dead_inputs


@jax.jit
def _corrected(W, W_ref, H, C, percdamp):
    Hd, _ = jax.vmap(fill_dead_inputs)(H)  # the solver's convention for always-zero inputs
    eye = jnp.eye(H.shape[-1], dtype=H.dtype)
    lam = percdamp * jnp.mean(jnp.diagonal(Hd, axis1=1, axis2=2), axis=1)[:, None, None]
    A = jnp.einsum("gdr,grk->gdk", W_ref, C, precision=lax.Precision.HIGHEST) + lam * W
    L = jnp.linalg.cholesky(Hd + lam * eye)
    Wt = jax.scipy.linalg.cho_solve((L, True), jnp.swapaxes(A, 1, 2))
    return jnp.swapaxes(Wt, 1, 2)


def dense_target(W: jax.Array, W_ref: jax.Array, H: jax.Array, C: jax.Array,
                 percdamp: float = 0.01) -> jax.Array:
    """W' (G, d_out, k): the weights whose pruning on H solves the reference-output objective.

    W (G, d_out, k): the layer's current weights (``layout.layer_matrix``); W_ref (G, d_out, k_r):
    the reference's weights of the same layer; H (G, k, k) and C (G, k_r, k) as returned by
    ``hessian.collect_paired`` (without the G axis for an ungrouped layer: then add it).
    """
    H = H if H.ndim == 3 else H[None]
    C = C if C.ndim == 3 else C[None]
    f32 = jnp.float32
    return _corrected(W.astype(f32), W_ref.astype(f32), H.astype(f32), C.astype(f32),
                      jnp.asarray(percdamp, f32))
