"""The install a fresh machine runs: README's test command, .ci/run and the test lock agree."""

from __future__ import annotations

import pathlib
import re
import tomllib

from packaging.markers import default_environment
from packaging.requirements import Requirement

ROOT = pathlib.Path(__file__).resolve().parents[1]
LOCK = ROOT / "tools" / "test-lock.txt"
# The platform the lock is made for (tools/lock.sh).
LOCK_ENV = {**default_environment(), "sys_platform": "linux", "platform_system": "Linux",
            "python_version": "3.11", "platform_machine": "x86_64"}


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block, "README.md does not start with a ```bash block of set-up commands"
    return block.group(1).strip().splitlines()


def test_ci_runs_the_readme_test_command():
    steps = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
             if line and not line.startswith(("#", "set ", "cd ")) and "pip freeze" not in line]
    assert " && ".join(steps) == _readme_commands()[1]
    assert "-c tools/test-lock.txt" in _readme_commands()[1]


def _locked() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        if "==" in line and not line.startswith(("#", " ")):
            name, version = line.split(";")[0].strip().split("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def _requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in ("test", "images", "onnx"):
        reqs += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return [r for r in reqs if r.name != project["name"]
            and (r.marker is None or r.marker.evaluate(LOCK_ENV))]


def test_lock_pins_every_requirement_inside_its_range():
    """A dependency added or re-ranged in pyproject.toml without running tools/lock.sh fails."""
    pins = _locked()
    assert len(pins) > 50, f"{LOCK} pins only {len(pins)} packages"
    problems = []
    for req in _requirements():
        key = re.sub(r"[-_.]+", "-", req.name).lower()
        if key not in pins:
            problems.append(f"{req.name} is not in the lock")
        elif not req.specifier.contains(pins[key], prereleases=True):
            problems.append(f"{req.name}=={pins[key]} is outside {req.specifier}")
    assert not problems, "; ".join(problems) + " — run tools/lock.sh"
