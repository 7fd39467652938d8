#!/usr/bin/env bash
# Regenerates tools/test-lock.txt: exact versions of everything `pip install '.[test]'` pulls in,
# for Python 3.11 on Linux x86_64 with the CPU build of torch. The README's test command and
# .ci/run install with `-c tools/test-lock.txt`; `pip install .` for users keeps the ranges in
# pyproject.toml. Refresh after changing a dependency in pyproject.toml, or when
# tools/check_latest.sh shows that newer releases pass (BUILD_NOTES, "Dependencies").
#
#   tools/lock.sh            # resolve against the package index (needs it), rewrite the lock
#
# torch's CPU wheel: these machines keep it in /opt/wheels (pip's find-links); elsewhere set
# TORCH_CPU_INDEX (e.g. PyTorch's CPU wheel index) so that the lock does not take the CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.9
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install -q "uv==$UV_VERSION"
torch_source=(--find-links /opt/wheels)
if [[ -n "${TORCH_CPU_INDEX:-}" ]]; then
  torch_source=(--extra-index-url "$TORCH_CPU_INDEX" --index-strategy unsafe-best-match)
fi
"$tmp/venv/bin/uv" pip compile pyproject.toml --extra test \
  --python-version 3.11 --python-platform x86_64-manylinux_2_28 "${torch_source[@]}" \
  --custom-compile-command tools/lock.sh --quiet -o "$tmp/lock.txt"
mv "$tmp/lock.txt" tools/test-lock.txt
echo "wrote tools/test-lock.txt ($(grep -c '==' tools/test-lock.txt) pinned packages)"
