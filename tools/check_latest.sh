#!/usr/bin/env bash
# Tomorrow's breakage today: installs the newest releases inside pyproject.toml's ranges (no lock)
# into a temporary venv, lists what is newer than tools/test-lock.txt, and runs the linter and the
# default (fast) test suite from the repository root on them. Extra arguments go to pytest.
#
#   tools/check_latest.sh                     # the whole default suite (~15 min on 2 cores)
#   tools/check_latest.sh tests/test_import_names.py tests/test_convert_parity.py
#
# Green: tools/lock.sh may move the lock forward. Red: a release inside our ranges breaks us; fix
# the code or narrow the range before it reaches a user's `pip install .`.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m venv "$tmp/venv"
py="$tmp/venv/bin/python"
"$py" -m pip install -q -e '.[test]' 2>&1 | grep -v "^WARNING: Location" || true
"$py" -m pip install -q --no-deps timm 2>&1 | grep -v "^WARNING: Location" || true
"$py" -m pip check || true
echo "== newer than tools/test-lock.txt =="
"$py" - <<'PY'
import importlib.metadata as md
import re

def key(name):
    return re.sub(r"[-_.]+", "-", name).lower()

locked = {}
for line in open("tools/test-lock.txt"):
    if "==" in line and not line.startswith(("#", " ")):
        name, version = line.split(";")[0].strip().split("==")
        locked[key(name)] = version
installed = {key(d.metadata["Name"]): d.version for d in md.distributions()}
changed = [(n, locked[n], v) for n, v in sorted(installed.items()) if n in locked and locked[n] != v]
new = sorted(set(installed) - set(locked) - {"taco-jax", "pip", "setuptools", "timm"})
for name, old, now in changed:
    print(f"  {name}: {old} -> {now}")
for name in new:
    print(f"  {name}: not in the lock ({installed[name]})")
if not changed and not new:
    print("  nothing: the lock is the newest inside the ranges")
PY
"$tmp/venv/bin/ruff" check .
"$py" -m pytest "$@"
