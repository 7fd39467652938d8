"""Package list only (metadata lives in pyproject.toml).

kernels/ ships inside the wheel as ``taco_jax.kernels`` so it can never shadow, or be shadowed by,
the unrelated PyPI package named ``kernels``; ``python -m kernels.bench`` works from a checkout.
"""

from setuptools import find_packages, setup

kernel_packages = [f"taco_jax.{p}" for p in find_packages(include=["kernels", "kernels.*"])]
setup(
    packages=find_packages(include=["taco_jax", "taco_jax.*"]) + kernel_packages,
    package_dir={"taco_jax.kernels": "kernels"},
)
