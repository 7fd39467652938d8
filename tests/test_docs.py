"""The documentation points at things that exist.

For README.md, BUILD_NOTES.md, kernels/README.md and kernels/measured/README.md: every relative
markdown link target exists (relative to the document's folder), every backticked token that
looks like a repository path exists (relative to the repository root), and every module a
``python -m`` command or a ``from taco_jax... import`` line names has its file. No document points
outside the repository (``../shared/``), and BUILD_NOTES.md stays short enough to read.
"""

from __future__ import annotations

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ("README.md", "BUILD_NOTES.md", "kernels/README.md", "kernels/measured/README.md")
PATH_PREFIXES = ("taco_jax/", "kernels/", "configs/", "launch/", "tests/", "tools/", ".ci/")
TOP_LEVEL = ("pyproject.toml", "setup.py", "README.md", "BUILD_NOTES.md")
SKIP_CHARS = ("*", "<", "{", " ", "$")
MAX_BUILD_NOTES_LINES = 500

FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.S | re.M)
INLINE_CODE = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
MODULE = re.compile(r"python3? -m ((?:taco_jax|launch)(?:\.\w+)*)|"
                    r"^\s*from ((?:taco_jax|launch|configs)(?:\.\w+)*) import", re.M)


def _text(doc: str) -> str:
    return (ROOT / doc).read_text(encoding="utf-8")


def _prose(text: str) -> str:
    """The text without fenced code blocks (their backticks are not inline code)."""
    return FENCE.sub("", text)


def _repo_path(token: str) -> str | None:
    """The repository path a backticked token names, or None if it does not look like one."""
    if any(c in token for c in SKIP_CHARS):
        return None
    if not (token.startswith(PATH_PREFIXES) or token in TOP_LEVEL
            or re.fullmatch(r"[A-Z][A-Z_]*\.md", token)):
        return None
    token = token.split("::", 1)[0]                     # tests/test_x.py::test_name
    token = re.sub(r"(\.py):.*$", r"\1", token)         # configs/taco/demo.py:variant, x.py:12
    return re.sub(r":\d+$", "", token)                  # any other FILE:LINE


def _module_file(module: str) -> bool:
    base = ROOT.joinpath(*module.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file() or base.is_dir()


@pytest.mark.parametrize("doc", DOCS)
def test_relative_links_exist(doc):
    folder = (ROOT / doc).parent
    missing = []
    for target in LINK.findall(_prose(_text(doc))):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith(("#", "/")):
            continue  # a URL, an anchor in this document, or an absolute path
        path = target.split("#", 1)[0]
        if path and not (folder / path).exists():
            missing.append(target)
    assert not missing, f"{doc} links to missing files: {missing}"


@pytest.mark.parametrize("doc", DOCS)
def test_backticked_repository_paths_exist(doc):
    tokens = {t for t in INLINE_CODE.findall(_prose(_text(doc)))}
    missing = sorted(t for t in tokens
                     if (p := _repo_path(t)) is not None and not (ROOT / p).exists())
    assert not missing, f"{doc} names paths that do not exist: {missing}"


@pytest.mark.parametrize("doc", DOCS)
def test_named_modules_exist(doc):
    modules = {m for pair in MODULE.findall(_text(doc)) for m in pair
               if m and not any(part.isupper() for part in m.split("."))}  # skip placeholders
    missing = sorted(m for m in modules if not _module_file(m))
    assert not missing, f"{doc} names modules that do not exist: {missing}"


@pytest.mark.parametrize("doc", DOCS)
def test_no_pointer_outside_the_repository(doc):
    assert "../shared/" not in _text(doc), f"{doc} points into ../shared/, outside the repository"


def test_build_notes_stay_short():
    lines = len(_text("BUILD_NOTES.md").splitlines())
    assert lines <= MAX_BUILD_NOTES_LINES, f"BUILD_NOTES.md has {lines} lines (at most 500)"


def test_the_checks_catch_what_they_should():
    assert _repo_path("configs/taco/demo.py:model=vit_mini,pattern=2:4") == "configs/taco/demo.py"
    assert _repo_path("tests/test_docs.py::test_build_notes_stay_short") == "tests/test_docs.py"
    assert _repo_path("taco_jax/run/taco.py:42") == "taco_jax/run/taco.py"
    assert _repo_path("kernels/measured/<device kind>.json") is None
    assert _repo_path("python -m launch.taco") is None
    assert _repo_path("DESIGN.md") == "DESIGN.md"  # checked, so it must not be named
    assert _prose("a\n```bash\n`x`\n```\nb `y`").count("`") == 2
    assert _module_file("taco_jax.bench.sparse_vit") and _module_file("taco_jax.kernels.bench")
    assert not _module_file("taco_jax.compress.bench_sparse")


def test_only_the_agreed_top_level_entries_are_tracked():
    """The top level holds the project's rooms and files, no leftovers (two debugging pickles
    sat there for a week)."""
    import shutil
    import subprocess

    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    top = {f.split("/")[0] for f in files}
    allowed = {*TOP_LEVEL, "taco_jax", "kernels", "configs", "launch", "tests", "tools", ".ci",
               ".gitignore"}
    assert top <= allowed, sorted(top - allowed)
