#!/usr/bin/env bash
# The ONE prepared GPU check, for a lent GPU machine (see the device notes): run it
# from the repository root of a copy of the working tree. It
#   1. reports the machine (GPU, driver, torch, nvcc) and fails clearly if anything is missing;
#   2. builds the extension against that machine's torch:
#        MTA_WITH_CUDA=ON MTA_CUDA_ARCHS=90 pip install --no-build-isolation --no-deps .
#      with ptxas resource reports (registers / spills) kept in $OUT/ptxas.txt;
#   3. runs the op tests on the GPU (python_tests/test_{segment_pool,token_salience,
#      relational_loss}.py, every case on each device: reference comparison on fresh random
#      inputs, NaN-poisoned outputs, fp64 gradcheck, bit-identical backward, opcheck;
#      test_gpu_sync.py: no host sync in a structural_loss step, CUDA-graph capture,
#      torch.compile reduce-overhead);
#   4. runs the GPU benchmarks (benchmarks/bench_gpu.py) and prints one short table vs the
#      targets; JSON to $OUT/bench_gpu.json and benchmarks/results/gpu_<card>.json;
#   5. the review checks (benchmarks/gpu_review_checks.py): fused vs separate relational_loss bit
#      for bit in every dtype, bf16/fp16 tensor-core Grams within rtol 2e-4 on large cases, and
#      the performance cliffs (deep overlap in csr_sort, very long units, token_salience with
#      B = 1, the mirrored E writes), JSON to $OUT/review_checks.json;
#   6. if time is left: compute-sanitizer memcheck + racecheck + synccheck on a small smoke run.
# Everything under a global deadline (GPU_CHECK_BUDGET_S, default 470 s: under 8 minutes).
# Exit status: 0 all good; 1 build/test/bench failure; 2 the machine lacks something.
# GPU_CHECK_DRY=1 checks the script itself on a machine without a GPU: no device required, the
# CUDA tests skip (except the registration check), the benchmarks run tiny on the CPU.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$REPO/benchmarks/results/gpu_check_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET_S:-470}
T0=$(date +%s)
WORK=$(mktemp -d)  # tests and benches run from here so `import mta_ext` is the installed one
export PYTHONUNBUFFERED=1

log() { echo "[gpu_check +$(($(date +%s) - T0))s] $*"; }
left() { local l=$((BUDGET - ($(date +%s) - T0))); echo $((l > 1 ? l : 1)); }
cap() { local l; l=$(left); echo $((l < $1 ? l : $1)); }  # seconds for a stage: min(N, left)
die() { log "FAILED: $1"; exit "${2:-1}"; }
status_build=skipped status_tests=skipped status_bench=skipped status_sanitizer=skipped
status_review=skipped
summary() {
  log "summary: build=$status_build tests=$status_tests bench=$status_bench review=$status_review sanitizer=$status_sanitizer"
  log "logs in $OUT"
}
trap summary EXIT

# ------------------------------------------------------------------ 1. the machine
log "repo $REPO, python $($PY -c 'import sys; print(sys.version.split()[0])')"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm \
  --format=csv,noheader 2>&1 | tee "$OUT/nvidia_smi.txt" || true
DRY=${GPU_CHECK_DRY:-0}
$PY - "$DRY" <<'EOF' || die "torch cannot see a CUDA device" 2
import sys, torch
if sys.argv[1] == "1" and not torch.cuda.is_available():
    print(f"dry run: torch {torch.__version__} (CUDA {torch.version.cuda}), no device")
    raise SystemExit(0)
assert torch.cuda.is_available(), "torch.cuda.is_available() is False"
p = torch.cuda.get_device_properties(0)
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), {p.name}, sm_{p.major}{p.minor}, "
      f"{p.multi_processor_count} SMs, {p.total_memory / 2**30:.0f} GiB")
EOF
if ! command -v nvcc >/dev/null 2>&1; then
  for c in /usr/local/cuda/bin/nvcc /usr/local/cuda-*/bin/nvcc; do
    if [ -x "$c" ]; then export PATH="$(dirname "$c"):$PATH"; break; fi
  done
fi
command -v nvcc >/dev/null 2>&1 || die "no nvcc on this machine" 2
log "nvcc: $(nvcc --version | tail -n 2 | head -n 1)"
$PY -c 'import scikit_build_core, pybind11, pytest' 2>/dev/null ||
  die "missing build/test packages (scikit-build-core, pybind11, pytest): carry wheels (.whl)" 2
command -v cmake >/dev/null && command -v ninja >/dev/null || $PY -c 'import cmake, ninja' ||
  die "cmake/ninja missing" 2

# ------------------------------------------------------------------ 2. build
log "building (MTA_WITH_CUDA=ON, archs ${MTA_CUDA_ARCHS:-90})"
status_build=failed
(
  cd "$REPO"
  MTA_WITH_CUDA=ON MTA_CUDA_ARCHS=${MTA_CUDA_ARCHS:-90} \
    CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
    timeout "$(left)" "$PY" -m pip install --no-build-isolation --no-deps --no-cache-dir -v \
    --config-settings=cmake.define.CMAKE_CUDA_FLAGS=-Xptxas=-v \
    --config-settings=build-dir="$WORK/build" . >"$OUT/build.log" 2>&1
) || { tail -n 60 "$OUT/build.log"; die "build (log: $OUT/build.log)"; }
grep -E "Compiling entry|Function properties|registers|spill" "$OUT/build.log" >"$OUT/ptxas.txt" || true
(cd "$WORK" && $PY - "$DRY" <<'EOF') || die "the installed package does not import with CUDA kernels"
import sys, torch, mta_ext
info = mta_ext.build_info()
print("build_info:", {k: info[k] for k in ("torch_built", "cuda", "cuda_archs", "cuda_available")})
assert info["cuda"] and (info["cuda_available"] or sys.argv[1] == "1"), info
for op in ("segment_pool", "segment_pool_backward", "token_salience", "relational_loss",
           "relational_loss_backward"):
    if hasattr(torch.ops.mta_ext, op):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"mta_ext::{op}", "CUDA"), op
    else:
        print(f"note: op {op} is not in this build")
EOF
status_build=ok
log "build ok; ptxas spills: $(grep -c 'bytes spill stores' "$OUT/ptxas.txt" || true) lines, nonzero:"
grep -E "[1-9][0-9]* bytes spill" "$OUT/ptxas.txt" | head -n 5 || true

# ------------------------------------------------------------------ 3. CUDA tests
# The op tests (every case on each device, CUDA included), the registration check, and the
# host-sync proofs (test_gpu_sync.py: sync debug mode "error" around a full structural_loss
# fwd+bwd, CUDA-graph replay bit-identical, torch.compile reduce-overhead; test_no_host_sync.py:
# the static scan and the simulated device path). -k keeps the CUDA cases (their ids name the
# device) and the two sync files: the CPU cases already ran in CI.
tests=()
for f in test_segment_pool.py test_token_salience.py test_relational_loss.py test_build.py \
         test_gpu_sync.py test_no_host_sync.py; do
  tests+=("$REPO/python_tests/$f")
done
log "CUDA tests: ${tests[*]##*/}"
status_tests=failed
if (cd "$WORK" && timeout "$(cap 240)" "$PY" -m pytest -q -p no:cacheprovider \
      -o addopts="" --rootdir "$REPO" --junitxml "$OUT/junit_cuda.xml" \
      -k "cuda or test_gpu_sync or test_no_host_sync" "${tests[@]}" 2>&1 | tee "$OUT/tests.log" | tail -n 25); then
  status_tests=ok
fi
grep -qE "(passed|failed)" "$OUT/tests.log" || status_tests=failed

# ------------------------------------------------------------------ 4. benchmarks
log "benchmarks"
status_bench=failed
card=$($PY -c 'import torch, re; print(re.sub(r"[^A-Za-z0-9]+", "_", torch.cuda.get_device_name()).strip("_") if torch.cuda.is_available() else "dry_run")')
bench_args=()
[ "$DRY" = 1 ] && bench_args=(--dry-run)
if (cd "$WORK" && timeout "$(cap 200)" "$PY" "$REPO/benchmarks/bench_gpu.py" "${bench_args[@]}" \
      --json "$OUT/bench_gpu.json" 2>"$OUT/bench_stderr.log" | tee "$OUT/bench_table.txt"); then
  status_bench=ok
fi
tail -n 8 "$OUT/bench_stderr.log" || true
if [ -s "$OUT/bench_gpu.json" ] && [ "$DRY" != 1 ]; then
  mkdir -p "$REPO/benchmarks/results"
  cp "$OUT/bench_gpu.json" "$REPO/benchmarks/results/gpu_${card}.json"
fi

# ------------------------------------------------------------------ 5. review checks
log "review checks (fused vs separate, tensor-core Grams, performance cliffs)"
status_review=failed
review_args=()
[ "$DRY" = 1 ] && review_args=(--dry-run)
if (cd "$WORK" && timeout "$(cap 120)" "$PY" "$REPO/benchmarks/gpu_review_checks.py" \
      "${review_args[@]}" --json "$OUT/review_checks.json" 2>&1 | tee "$OUT/review_checks.log"); then
  status_review=ok
fi

# ------------------------------------------------------------------ 6. sanitizer (if time left)
if command -v compute-sanitizer >/dev/null 2>&1 && [ "$(left)" -gt 90 ]; then
  status_sanitizer=ok
  for tool in memcheck racecheck synccheck; do
    t=$(( $(cap 300) / 3 ))
    [ "$t" -lt 30 ] && { status_sanitizer="$status_sanitizer,$tool-skipped"; continue; }
    log "compute-sanitizer --tool $tool (timeout ${t}s)"
    (cd "$WORK" && timeout "$t" compute-sanitizer --tool "$tool" --error-exitcode 9 \
        "$PY" "$REPO/benchmarks/sanitize_smoke.py" >"$OUT/sanitizer_$tool.log" 2>&1) && rc=0 || rc=$?
    tail -n 3 "$OUT/sanitizer_$tool.log"
    case $rc in
      0) ;;
      9) status_sanitizer="$status_sanitizer,$tool-ERRORS" ;;
      124) status_sanitizer="$status_sanitizer,$tool-timeout" ;;
      *) status_sanitizer="$status_sanitizer,$tool-rc$rc" ;;
    esac
  done
fi

[ -f "$OUT/bench_table.txt" ] && cat "$OUT/bench_table.txt"
[ "$status_tests" = ok ] && [ "$status_bench" = ok ] && [ "$status_review" = ok ] || exit 1
