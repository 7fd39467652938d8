"""Sparse linear ``y = x @ Wᵀ (+ b)`` with ``W`` in BSR: reference and Pallas kernels."""
