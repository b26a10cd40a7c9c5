#!/usr/bin/env bash
# Developer loop: build the extension in place (mta_ext/_C*.so, mta_ext/_align*.so,
# mta_ext/_build_info.py, all git-ignored) against the current Python's torch, so that
# `python -m pytest` run from the repository root imports this checkout.
# Usage: tools/dev_build.sh [extra cmake -D args]
# Env: MTA_WITH_CUDA=OFF|AUTO|ON, MTA_WITH_SIMT=ON|OFF (default: ON when no CUDA kernels are built), MTA_CUDA_ARCHS (e.g. 90), PYTHON, MTA_BUILD_DIR, MTA_BUILD_JOBS.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python}
# The interpreter's own bin dir first: its venv carries cmake >= 3.26 and ninja (Debian's
# cmake is 3.25), and ccache when installed there.
PATH="$(dirname "$("$py" -c 'import sys; print(sys.executable)')"):$PATH"
bdir=${MTA_BUILD_DIR:-build/dev}
# The SIMT backend (CUDA kernels run on the CPU, for the tests) by default when this build
# compiles no real CUDA kernels (it needs a CPU-only build).
if [[ -z "${MTA_WITH_SIMT:-}" ]]; then
  MTA_WITH_SIMT=OFF
  if [[ "${MTA_WITH_CUDA:-AUTO}" == OFF || -z "$("$py" -c 'import torch; print(torch.version.cuda or "")')" ]]; then
    MTA_WITH_SIMT=ON
  fi
fi
launcher=()
if command -v ccache >/dev/null 2>&1; then
  launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache)
fi
cmake -S . -B "$bdir" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DPython_EXECUTABLE="$("$py" -c 'import sys; print(sys.executable)')" \
  -Dpybind11_DIR="$("$py" -m pybind11 --cmakedir)" \
  -DMTA_WITH_CUDA="${MTA_WITH_CUDA:-AUTO}" -DMTA_WITH_SIMT="${MTA_WITH_SIMT:-OFF}" -DMTA_CUDA_ARCHS="${MTA_CUDA_ARCHS:-}" \
  "${launcher[@]}" "$@" >/dev/null
cmake --build "$bdir" -j "${MTA_BUILD_JOBS:-2}"
cmake --install "$bdir" --prefix "$bdir/install" >/dev/null
dest=${MTA_INSTALL_DIR:-mta_ext}
mkdir -p "$dest"
cp "$bdir"/install/mta_ext/*.so "$bdir"/install/mta_ext/_build_info.py "$dest"/
echo "built: $(ls "$dest"/*.so | tr '\n' ' ')"
