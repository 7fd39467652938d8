"""The two BSR weights of a block-sparse MLP, laid out for a fused kernel.

``fc1``: W1 (H, D) in BSR, block-row j = hidden chunk j (its blocks walk the model dim D).
``fc2``: stored as the BSR of W2ᵀ (H, D), i.e. grouped by *hidden* chunk too: once a kernel has
the hidden chunk j in registers/VMEM it multiplies it by exactly the stored W2 blocks that read
chunk j and adds them into their output columns, so the hidden activation never leaves the chip.
Both use blocks (b_hidden, b_model); an (r, c) pruning block of W2 (D, H) is a (c, r) block of W2ᵀ.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..bsr import BSR, bsr_from_dense, to_device, validate_bsr


@dataclasses.dataclass(frozen=True)
class SparseMLPWeights:
    """w1: BSR of W1 (H, D); b1 (H,); w2t: BSR of W2ᵀ (H, D); b2 (D,)."""

    w1: BSR
    b1: Any
    w2t: BSR
    b2: Any

    @property
    def dims(self) -> tuple[int, int]:
        """(D, H): model and hidden widths."""
        return self.w1.shape[1], self.w1.shape[0]

    def validate(self) -> SparseMLPWeights:
        validate_bsr(self.w1)
        validate_bsr(self.w2t)
        D, H = self.dims
        if self.w2t.shape != (H, D):
            raise ValueError(f"w2t must be W2ᵀ with shape {(H, D)} to match w1 {self.w1.shape}, "
                             f"got {self.w2t.shape}")
        if self.w1.block_shape[0] != self.w2t.block_shape[0]:
            raise ValueError(f"w1 and w2t must share the hidden block size: w1 blocks "
                             f"{self.w1.block_shape}, w2t blocks {self.w2t.block_shape}")
        if self.b1.shape != (H,) or self.b2.shape != (D,):
            raise ValueError(f"b1 must have shape ({H},) and b2 ({D},), "
                             f"got {self.b1.shape} and {self.b2.shape}")
        if self.w1.data.dtype != self.w2t.data.dtype:
            raise ValueError(f"w1 and w2t must share a dtype, got {self.w1.data.dtype} and "
                             f"{self.w2t.data.dtype}")
        return self


jax.tree_util.register_dataclass(SparseMLPWeights, data_fields=["w1", "b1", "w2t", "b2"],
                                  meta_fields=[])


def mlp_weights_from_dense(w1: Any, b1: Any, w2: Any, b2: Any, block_shape: tuple[int, int],
                           dtype: Any = None) -> SparseMLPWeights:
    """Masked dense W1 (H, D), W2 (D, H) (``y = x @ Wᵀ`` orientation) and biases -> on-device
    SparseMLPWeights with blocks ``block_shape = (b_hidden, b_model)`` (built on the host)."""
    w1, w2 = np.asarray(w1), np.asarray(w2)
    if w1.ndim != 2 or w2.shape != w1.shape[::-1]:
        raise ValueError(f"w1 must be (H, D) and w2 (D, H), got {w1.shape} and {w2.shape}")
    dtype = dtype or w1.dtype
    out = SparseMLPWeights(
        w1=to_device(bsr_from_dense(w1, block_shape), dtype), b1=jnp.asarray(b1, jnp.float32),
        w2t=to_device(bsr_from_dense(np.ascontiguousarray(w2.T), block_shape), dtype),
        b2=jnp.asarray(b2, jnp.float32))
    return out.validate()


def check_mlp_args(x: jax.Array, p: SparseMLPWeights) -> None:
    """Static checks of a fused-MLP call."""
    p.validate()
    D, _ = p.dims
    if x.ndim != 2 or x.shape[1] != D:
        raise ValueError(f"x must have shape (tokens, {D}), got {x.shape}")
    if jnp.dtype(x.dtype) not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)):
        raise ValueError(f"x dtype must be float32 or bfloat16, got {x.dtype}")
    if jnp.dtype(p.w1.data.dtype) != jnp.dtype(x.dtype):
        raise ValueError(f"weight dtype {p.w1.data.dtype} must equal x dtype {x.dtype}")
