"""taco-jax: turn a large general vision model into a small, fast specialist for one task."""

__version__ = "0.1.0"
