#!/usr/bin/env bash
# The SIMT backend under AddressSanitizer: builds the extension with MTA_WITH_SIMT=ON and
# MTA_SIMT_ASAN=ON into build/asan (the in-place dev build is left alone), lays out a copy of the
# package there, and runs pytest on it with libasan preloaded, so an out-of-bounds read or write
# of a CUDA kernel (executed on the CPU) aborts the test run with ASan's report.
# Usage: tools/simt_asan.sh [pytest args]   (default: the SIMT memory-safety tests)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
py=${PYTHON:-python}
bdir=${MTA_ASAN_BUILD_DIR:-build/asan}
# A copy of the Python package, then the ASan build of its extension into it.
rm -rf "$bdir/site" && mkdir -p "$bdir/site"
cp -r mta_ext "$bdir/site/"
rm -f "$bdir"/site/mta_ext/*.so "$bdir/site/mta_ext/_build_info.py"
MTA_BUILD_DIR="$bdir/cmake" MTA_WITH_CUDA=OFF MTA_WITH_SIMT=ON MTA_INSTALL_DIR="$bdir/site/mta_ext" \
  tools/dev_build.sh -DMTA_SIMT_ASAN=ON
libasan=$(${CXX:-g++} -print-file-name=libasan.so)
cd "$bdir/site"  # imports the ASan copy, not the checkout
# detect_leaks=0: Python and torch keep allocations alive at exit by design.
# abort_on_error: an ASan report ends the run with a non-zero status, whatever pytest thinks.
# -s: ASan writes its report to stderr, which pytest would otherwise capture and lose on abort.
LD_PRELOAD="$libasan" ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:halt_on_error=1 \
  "$py" -m pytest -p no:cacheprovider -s "$ROOT/python_tests/${1:-test_simt_memory.py}" "${@:2}"
