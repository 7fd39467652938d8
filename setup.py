"""Package list only (metadata lives in pyproject.toml).

The kernels live in the top-level ``kernels/`` folder and are imported as ``taco_jax.kernels``,
their one import name: ``taco_jax/kernels`` is a relative symbolic link to that folder, and the
folder has no ``__init__.py`` (``taco_jax.kernels`` is an implicit namespace package inside
``taco_jax``). So a checkout, an editable install and a wheel all import ``taco_jax.kernels``
alike, and a checkout never offers a regular package ``kernels`` that would shadow Hugging Face's
distribution of that name (``kernels/README.md``). A wheel holds copies of the files, not the link.
"""

from setuptools import find_packages, setup

kernel_packages = ["taco_jax.kernels"] + [
    f"taco_jax.kernels.{p}" for p in find_packages(where="kernels")
]
setup(packages=find_packages(include=["taco_jax", "taco_jax.*"]) + kernel_packages)
