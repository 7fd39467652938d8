"""Benchmarks (each an absl CLI: ``python -m taco_jax.bench.NAME --help``): ``sparse_vit``
(end-to-end ViT latency on the block-sparse kernels), ``latency_variants`` (its same-weight
model variants), ``retrieval``, ``models``, ``data``, ``solver`` and ``prune_model``. The kernel
microbenchmark stays beside the kernels: ``python -m taco_jax.kernels.bench``."""
