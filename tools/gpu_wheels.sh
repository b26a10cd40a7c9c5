#!/usr/bin/env bash
# Download the wheels that benchmarks/gpu_check.sh may need on a GPU machine without internet
# (its image: Python 3.12, torch 2.11.0+cu130, nvcc 13.0; build/test packages may be missing or
# older than the build needs) into wheels/ (git-ignored). Carry that folder with the tree
# (the device tool's `carry: ["wheels"]`); gpu_check.sh installs from it, offline, only what is
# missing or too old.
# Usage: tools/gpu_wheels.sh [PYTHON_VERSION (default 3.12)]
set -euo pipefail
cd "$(dirname "$0")/.."
PYV=${1:-3.12}
PY=${PYTHON:-python3}
rm -rf wheels && mkdir -p wheels
# The build (tools/dev_build.sh: cmake >= 3.26, ninja, pybind11; scikit-build-core >= 1.1 for a
# `pip install .`) and the tests (pytest, hypothesis), with their dependencies.
"$PY" -m pip download -q --disable-pip-version-check -d wheels \
  --only-binary=:all: --python-version "$PYV" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform any \
  "scikit-build-core>=1.1" "pybind11>=2.12" "cmake>=3.26" ninja "pytest>=8" "hypothesis>=6.100"
ls -1 wheels
du -sh wheels
