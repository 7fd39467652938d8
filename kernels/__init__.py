"""Pallas block-sparse kernels (installed as ``taco_jax.kernels``; ``kernels`` in a checkout).

- ``bsr``: the BSR format (``bsr_from_dense``, ``bsr_to_dense``, ``pad_bsr``, ``validate_bsr``).
- ``sparse_linear``: ``y = x @ Wᵀ (+ b)``: ``reference``, ``kernel_tpu`` (Mosaic TPU),
  ``kernel_triton`` (Pallas Triton lowering), ``kernel_gpu`` (Mosaic GPU).
- ``sparse_mlp``: fused ``fc2(gelu(fc1(x)))`` with the same four variants (``weights`` holds the
  two BSR weights).
- ``layers``: NNX ``SparseLinear`` / ``SparseMLP`` with break-even dispatch.
- ``bench``: ``python -m kernels.bench --help``.
"""
