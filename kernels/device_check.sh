#!/usr/bin/env bash
# The prepared GPU check, from the tree (no install): bash kernels/device_check.sh [--deadline_s=450 ...]
cd "$(dirname "$0")/.." && PYTHONUNBUFFERED=1 exec python3 -m taco_jax.bench.device_check --out="${OUT:-device_check_out}" "$@"
