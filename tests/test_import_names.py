"""Our import names never shadow, and are never shadowed by, an installed distribution.

Run from the repository root, as the README's commands are: there the tree comes first on
``sys.path`` (``python -m``/``python -c`` put the working directory there), so a top-level folder
of ours with an ``__init__.py`` wins over any installed package of the same name. That happened
with ``kernels`` once transformers began importing Hugging Face's ``kernels`` (kernels/README.md).
"""

from __future__ import annotations

import importlib.metadata
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUR_DISTRIBUTION = "taco-jax"


def _run_from_root(code: str) -> str:
    """Runs ``python -c code`` with the repository root as working directory; returns stdout."""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, f"python -c {code!r} from {ROOT} failed:\n{done.stderr[-3000:]}"
    return done.stdout.strip()


def our_top_level_names() -> set[str]:
    """The names a checkout makes importable from its root: folders holding an ``__init__.py``."""
    return {p.parent.name for p in ROOT.glob("*/__init__.py")}


def test_kernels_folder_is_not_a_top_level_package():
    assert "kernels" not in our_top_level_names(), (
        "kernels/__init__.py is back: from the repository root `import kernels` would find our "
        "folder instead of Hugging Face's `kernels` distribution; import taco_jax.kernels instead")
    assert our_top_level_names() == {"taco_jax", "launch", "configs"}


def test_import_kernels_from_root_finds_the_installed_distribution():
    assert "kernels" in importlib.metadata.packages_distributions(), (
        "Hugging Face's `kernels` is not installed; the test extra pins it for this guard")
    path = pathlib.Path(_run_from_root("import kernels; print(kernels.__file__)")).resolve()
    assert ROOT / "kernels" not in path.parents and "site-packages" in path.parts, (
        f"`import kernels` from the repository root found {path}, not an installed distribution")


def test_transformers_imports_its_models_from_root():
    """What broke on a fresh machine: transformers importing ``kernels`` from the checkout."""
    out = _run_from_root("import transformers; from transformers import ViTForImageClassification,"
                         " ConvNextForImageClassification, ResNetForImageClassification;"
                         " print(transformers.__version__)")
    assert out


def test_taco_jax_kernels_imports_from_root_and_elsewhere(tmp_path):
    code = "import taco_jax.kernels.layers as m; print(m.__file__)"
    assert pathlib.Path(_run_from_root(code)).resolve().parent == ROOT / "kernels"
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_no_installed_distribution_provides_our_top_level_names():
    provided = importlib.metadata.packages_distributions()
    clashes = {name: sorted(set(provided.get(name, [])) - {OUR_DISTRIBUTION})
               for name in our_top_level_names()}
    clashes = {name: dists for name, dists in clashes.items() if dists}
    assert not clashes, "; ".join(
        f"top-level name {name!r} is ours and also provided by installed {', '.join(dists)}"
        for name, dists in clashes.items())
