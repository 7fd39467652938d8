"""Package list only (metadata lives in pyproject.toml).

The kernels live in the top-level ``kernels/`` folder and are imported as ``taco_jax.kernels``,
their one import name: ``taco_jax/kernels`` is a relative symbolic link to that folder, and the
folder has no ``__init__.py`` (``taco_jax.kernels`` is an implicit namespace package inside
``taco_jax``). So a checkout, an editable install and a wheel all import ``taco_jax.kernels``
alike, and a checkout never offers a regular package ``kernels`` that would shadow Hugging Face's
distribution of that name (``kernels/README.md``). A wheel holds copies of the files, not the link.

``launch/`` and ``configs/`` are linked the same way (``taco_jax/launch``, ``taco_jax/configs``), so
an installed package runs ``python -m taco_jax.launch.taco`` from any directory and finds its
configs by name; a checkout also runs ``python -m launch.taco`` from its root.
"""

from setuptools import find_packages, setup

kernel_packages = ["taco_jax.kernels"] + [
    f"taco_jax.kernels.{p}" for p in find_packages(where="kernels")
]
# taco_jax.launch and taco_jax.configs (regular packages behind their links) are found as they are.
setup(packages=find_packages(include=["taco_jax", "taco_jax.*"]) + kernel_packages)
