"""Pallas block-sparse kernels (installed as ``taco_jax.kernels``; ``kernels`` in a checkout)."""
