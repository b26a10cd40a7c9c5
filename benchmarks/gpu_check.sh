#!/usr/bin/env bash
# The ONE prepared GPU check, for a lent GPU machine: run from the repository root of a copy of
# the working tree. Steps, in the order of their value (each under a time cap, all under one
# deadline, GPU_CHECK_BUDGET_S, default 450 s: a full run stays under 8 device minutes):
#   0. versions: python, torch, `pip show scikit-build-core cmake`, nvcc, GPU; whether
#      compute-sanitizer and ncu exist and work (a capped ncu probe); installs carried wheels
#      (wheels/, tools/gpu_wheels.sh) offline, only what is missing or too old;
#   1. build in place (tools/dev_build.sh, MTA_WITH_CUDA=ON, sm_90, one job per core), build dir
#      kept in build/gpu (git-ignored: a warm machine keeps it, so a rerun recompiles nothing);
#      --skip-build reuses the in-place build when it already has the CUDA kernels;
#   2. compute-sanitizer memcheck on the smoke input (benchmarks/gpu/sanitize_smoke.py: every op,
#      fp16/bf16/fp32/fp64, host-int and fallback calls, the D = 7 scalar path, and the
#      wrong-metadata cases whose kernels must stay inside their buffers), fixed cap;
#   3. the CUDA tests: pytest over python_tests, the cases on the cuda device and the host-sync
#      proofs (-k "cuda or gpu_sync or no_host_sync"); modules that need packages the image
#      lacks (spaCy, ...) are reported as collection errors and the rest runs;
#   4. benchmarks: python -m benchmarks.gpu.bench_gpu (ceilings, the CPU table's cases on the GPU,
#      the targets; host-int path, one labelled raw-op fallback row per op, a host-sync proof
#      per case), then structural_loss at the paper's shape
#      (python -m benchmarks.training.bench_loss --device cuda --paper when that flag exists,
#      else --only paper);
#   5. the review checks (python -m benchmarks.gpu.review_checks);
#   6. with the time left: compute-sanitizer racecheck and synccheck on the valid smoke input.
#
# What comes back ($OUT, at most 7 files + one archive; the device returns at most 8):
#   summary.txt        versions, tools, per-step status and seconds, the result tables
#   sanitizer.txt      memcheck (+ racecheck/synccheck) summaries and the wrong-metadata report
#   tests.txt          pytest's failures and its closing line
#   bench_gpu.json     bench_gpu's results (ceilings, ops table, targets)
#   bench_loss.json    the structural_loss paper-shape comparison
#   review_checks.json fused == separate, tensor-core Grams, the cliffs
#   ptxas.txt          registers / spills per kernel
#   logs.tar.gz        every full log (build, tests + junit, sanitizer, benchmarks, ncu probe)
# Nothing is written into the tree except the build (build/gpu, mta_ext/*.so: git-ignored).
#
# Usage: bash benchmarks/gpu_check.sh [--dry-run] [--skip-build] [--quick]
#   --dry-run (or GPU_CHECK_DRY=1): the same steps in the same order on a machine without a
#     GPU, device "cpu": a CPU build (build/gpu-dry), the smoke input without the sanitizer,
#     the CUDA tests on the SIMT device (-k simt) when this build has it (tools/dev_build.sh
#     builds it on a CPU-only torch; the smoke input then runs the CUDA kernels), the benchmarks and
#     review checks at tiny sizes; the same file set in $OUT.
#   --skip-build (or GPU_CHECK_SKIP_BUILD=1): reuse the in-place build.
#   --quick: fewer benchmark targets (a rerun's budget).
# Env: OUT (default out/gpu_check), PYTHON, GPU_CHECK_BUDGET_S, GPU_CHECK_JOBS (default nproc),
#      MTA_CUDA_ARCHS (default 90).
# Exit status: 0 all good; 1 a step failed; 2 the machine lacks something.
set -uo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
DRY=${GPU_CHECK_DRY:-0}
SKIP_BUILD=${GPU_CHECK_SKIP_BUILD:-0}
QUICK=0
for a in "$@"; do
  case $a in
    --dry-run) DRY=1 ;;
    --skip-build) SKIP_BUILD=1 ;;
    --quick) QUICK=1 ;;
    *) echo "gpu_check.sh: unknown argument $a" >&2; exit 2 ;;
  esac
done
OUT=${OUT:-$REPO/out/gpu_check}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
LOGS=$REPO/build/gpu-logs  # full logs (archived into $OUT at exit); git-ignored
rm -rf "$LOGS" && mkdir -p "$LOGS/results"
PY=${PYTHON:-$(command -v python || command -v python3)}
BUDGET=${GPU_CHECK_BUDGET_S:-450}
JOBS=${GPU_CHECK_JOBS:-$(nproc)}
DEV=cuda
[ "$DRY" = 1 ] && DEV=cpu
T0=$(date +%s)
export PYTHONUNBUFFERED=1 MTA_BENCH_RESULTS_DIR=$LOGS/results
export PATH="$HOME/.local/bin:$PATH"  # console scripts of a --user install (cmake, ninja)
SUMMARY=$OUT/summary.txt
: >"$SUMMARY"

log() { echo "[gpu_check +$(($(date +%s) - T0))s] $*" | tee -a "$SUMMARY"; }
left() { local l=$((BUDGET - ($(date +%s) - T0))); echo $((l > 1 ? l : 1)); }
cap() { local l; l=$(left); echo $((l < $1 ? l : $1)); }  # seconds for a step: min(N, left)
STEPS=()
step_begin() { STEP_NAME=$1; STEP_T=$(date +%s); log "=== step $((${#STEPS[@]} + 1)): $1"; }
step_end() {  # step_end STATUS
  local s=$(($(date +%s) - STEP_T))
  STEPS+=("$(printf '%-12s %-28s %4d s' "$STEP_NAME" "$1" "$s")")
  log "--- $STEP_NAME: $1 (${s} s)"
}
finish() {
  {
    echo
    echo "steps (order, status, seconds); total $(($(date +%s) - T0)) s of a ${BUDGET} s budget:"
    printf '  %s\n' "${STEPS[@]}"
  } | tee -a "$SUMMARY"
  tar -czf "$OUT/logs.tar.gz" -C "$LOGS" . 2>/dev/null
  local n
  n=$(find "$OUT" -maxdepth 1 -type f | wc -l)
  echo "files in $OUT: $n (at most 8 come back): $(cd "$OUT" && ls | tr '\n' ' ')" | tee -a "$SUMMARY"
}
trap finish EXIT
FAILED=0

# ------------------------------------------------------------------ 0. versions and tools
step_begin versions
log "repo $REPO, dry_run=$DRY, device=$DEV, python $PY ($("$PY" -c 'import sys; print(sys.version.split()[0])'))"
"$PY" -m pip show scikit-build-core cmake ninja pybind11 pytest hypothesis 2>/dev/null |
  grep -E '^(Name|Version):' | paste - - | tee -a "$SUMMARY"
# Carried wheels (tools/gpu_wheels.sh): install offline what is missing or too old.
need=$("$PY" - <<'EOF'
import importlib.metadata as md
want = {"scikit-build-core": "1.1", "cmake": "3.26", "ninja": "0", "pybind11": "2.12",
        "pytest": "8", "hypothesis": "6.100"}
def ver(v): return tuple(int(x) for x in v.split(".")[:3] if x.isdigit())
miss = []
for name, lo in want.items():
    try:
        if ver(md.version(name)) < ver(lo):
            miss.append(f"{name}>={lo}")
    except md.PackageNotFoundError:
        miss.append(f"{name}>={lo}")
print(" ".join(miss))
EOF
)
if [ -n "$need" ]; then
  if [ -d "$REPO/wheels" ]; then
    log "installing from the carried wheels/: $need"
    ok=0
    for how in "" --user --break-system-packages; do  # plain, then user site, then PEP 668
      # shellcheck disable=SC2086
      "$PY" -m pip install -q --disable-pip-version-check --no-index \
        --find-links "$REPO/wheels" $how $need >>"$LOGS/wheels.log" 2>&1 && { ok=1; break; }
    done
    [ $ok = 1 ] && log "installed${how:+ ($how)}" || log "wheel install FAILED (logs.tar.gz: wheels.log)"
  else
    log "missing or too old: $need (no wheels/ carried: run tools/gpu_wheels.sh and carry wheels)"
  fi
fi
"$PY" - <<'EOF' 2>&1 | tee -a "$SUMMARY"
import torch
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), cuda available: "
      f"{torch.cuda.is_available()}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"device: {p.name}, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, "
          f"{p.total_memory / 2**30:.0f} GiB")
EOF
if [ "$DRY" != 1 ]; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader \
    2>&1 | tee -a "$SUMMARY"
  if ! command -v nvcc >/dev/null 2>&1; then
    for c in /usr/local/cuda/bin/nvcc /usr/local/cuda-*/bin/nvcc; do
      if [ -x "$c" ]; then export PATH="$(dirname "$c"):$PATH"; break; fi
    done
  fi
  "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' ||
    { log "FAILED: torch cannot see a CUDA device"; step_end "no device"; exit 2; }
  command -v nvcc >/dev/null 2>&1 || { log "FAILED: no nvcc"; step_end "no nvcc"; exit 2; }
fi
log "nvcc: $(nvcc --version 2>/dev/null | grep -o 'release [0-9.]*' || echo none)"
CUDA_BIN=$(dirname "$(command -v nvcc 2>/dev/null || echo /usr/local/cuda/bin/nvcc)")
SANITIZER=$(command -v compute-sanitizer || ls "$CUDA_BIN"/compute-sanitizer \
  /usr/local/cuda/compute-sanitizer/compute-sanitizer 2>/dev/null | head -n 1)
NCU=$(command -v ncu || ls "$CUDA_BIN"/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -n 1)
log "compute-sanitizer: ${SANITIZER:-absent} $([ -n "$SANITIZER" ] && "$SANITIZER" --version 2>&1 | grep -o 'Version [0-9.]*' | head -n 1)"
log "ncu: ${NCU:-absent} $([ -n "$NCU" ] && "$NCU" --version 2>&1 | grep -o 'Version [0-9.]*' | head -n 1)"
if [ -n "$NCU" ] && [ "$DRY" != 1 ]; then
  # Does ncu work here (performance counters are often not permitted in containers)?
  timeout 30 "$NCU" --metrics gpu__time_duration.sum -c 1 "$PY" -c \
    'import torch; x = torch.ones(1 << 20, device="cuda"); (x * 2).sum().item()' \
    >"$LOGS/ncu_probe.log" 2>&1 && r=0 || r=$?
  if [ $r = 0 ] && grep -q "gpu__time_duration" "$LOGS/ncu_probe.log"; then
    log "ncu: works (profiled one kernel)"
  else
    log "ncu: does NOT work here (rc $r): $(grep -m1 -E 'ERR|rror' "$LOGS/ncu_probe.log")"
  fi
fi
step_end ok

# ------------------------------------------------------------------ 1. build
step_begin build
have_build() {  # the in-place build imports and (on a GPU) has the CUDA kernels
  "$PY" - "$DRY" <<'EOF' >>"$LOGS/build.log" 2>&1
import sys, torch, mta_ext
info = mta_ext.build_info()
print("build_info:", {k: info.get(k) for k in ("torch_built", "cuda", "cuda_archs", "cuda_available")})
assert info["torch_built"].split("+")[0] == torch.__version__.split("+")[0], "built for another torch"
if sys.argv[1] != "1":
    assert info["cuda"] and info["cuda_available"], info
    names = [n.split("::")[1] for n in torch._C._dispatch_get_all_op_names()
             if n.startswith("mta_ext::") and not n.startswith("mta_ext::_")]
    miss = [n for n in names
            if not torch._C._dispatch_has_kernel_for_dispatch_key(f"mta_ext::{n}", "CUDA")]
    assert names and not miss, f"ops without a CUDA kernel: {miss}"
EOF
}
if [ "$DRY" = 1 ]; then
  bdir=build/gpu-dry cuda=OFF extra=()
else
  bdir=build/gpu cuda=ON extra=(-DCMAKE_CUDA_FLAGS=-Xptxas=-v)  # ptxas: registers, spills
fi
if [ "$SKIP_BUILD" = 1 ] && have_build; then
  step_end "skipped (in-place build ok)"
else
  log "building: MTA_WITH_CUDA=$cuda, archs ${MTA_CUDA_ARCHS:-90}, $JOBS jobs, build dir $bdir"
  if MTA_BUILD_DIR=$bdir MTA_WITH_CUDA=$cuda MTA_CUDA_ARCHS=${MTA_CUDA_ARCHS:-90} \
       MTA_BUILD_JOBS=$JOBS PYTHON=$PY timeout "$(left)" tools/dev_build.sh "${extra[@]}" \
       >>"$LOGS/build.log" 2>&1 && have_build; then
    step_end ok
  else
    tail -n 40 "$LOGS/build.log" | tee -a "$SUMMARY"
    step_end FAILED
    exit 1
  fi
fi
# ptxas reports of the last real build (kept beside it, so a --skip-build rerun has them too)
if grep -qE "Compiling entry|registers" "$LOGS/build.log" 2>/dev/null; then
  grep -E "Compiling entry|Function properties|registers|spill" "$LOGS/build.log" >"$bdir/ptxas.txt"
fi
cp "$bdir/ptxas.txt" "$OUT/ptxas.txt" 2>/dev/null || echo "no ptxas report (CPU build)" >"$OUT/ptxas.txt"
log "ptxas: $(grep -c 'Used [0-9]* registers' "$OUT/ptxas.txt") kernels reported, nonzero spills:" \
  "$(grep -cE '[1-9][0-9]* bytes spill' "$OUT/ptxas.txt")"

# ------------------------------------------------------------------ 2. memcheck
step_begin memcheck
if [ "$DRY" = 1 ] || [ -z "$SANITIZER" ]; then
  echo "memcheck: not run ($([ "$DRY" = 1 ] && echo "dry run" || echo "no compute-sanitizer")): the smoke input alone" >>"$OUT/sanitizer.txt"
  timeout "$(cap 60)" "$PY" -m benchmarks.gpu.sanitize_smoke --device "$DEV" >"$LOGS/memcheck.log" 2>&1 &&
    r=0 || r=$?
else
  timeout "$(cap 90)" "$SANITIZER" --tool memcheck --error-exitcode 9 --print-limit 20 \
    "$PY" -m benchmarks.gpu.sanitize_smoke --device cuda >"$LOGS/memcheck.log" 2>&1 && r=0 || r=$?
fi
{ echo "== memcheck (rc $r)"; grep -E "sanitize_smoke|ERROR SUMMARY|Invalid|=========  (of|at)" \
    "$LOGS/memcheck.log" | head -n 60; } >>"$OUT/sanitizer.txt"
case $r in
  0) step_end ok ;;
  9) step_end "ERRORS"; FAILED=1 ;;
  124) step_end "timeout"; FAILED=1 ;;
  *) step_end "FAILED rc $r"; FAILED=1 ;;
esac
grep -E "ERROR SUMMARY|outputs on valid input" "$LOGS/memcheck.log" | tee -a "$SUMMARY"

# ------------------------------------------------------------------ 3. CUDA tests
step_begin tests
kexpr="cuda or gpu_sync or no_host_sync"
if [ "$DRY" = 1 ]; then
  if "$PY" -c 'from mta_ext import _simt; raise SystemExit(0 if _simt.available() else 1)' 2>/dev/null; then
    kexpr="simt or gpu_sync or no_host_sync"  # the op tests' SIMT device ids name it
  fi
fi
log "pytest python_tests -k \"$kexpr\""
timeout "$(cap 120)" "$PY" -m pytest python_tests -q -p no:cacheprovider -o addopts="" \
  -k "$kexpr" -rfE --continue-on-collection-errors --junitxml "$LOGS/junit.xml" \
  >"$LOGS/tests.log" 2>&1 && r=0 || r=$?
{ grep -E "^(FAILED|ERROR)" "$LOGS/tests.log" | head -n 80; tail -n 1 "$LOGS/tests.log"; } >"$OUT/tests.txt"
log "pytest (rc $r): $(tail -n 1 "$LOGS/tests.log")"
case $r in
  0) step_end ok ;;
  5) step_end "no test selected" ;;
  124) step_end timeout; FAILED=1 ;;
  *) step_end "FAILED rc $r"; FAILED=1 ;;
esac

# ------------------------------------------------------------------ 4. benchmarks
step_begin bench_gpu
args=(--json "$OUT/bench_gpu.json")
[ "$DRY" = 1 ] && args+=(--dry-run)
[ "$QUICK" = 1 ] && args+=(--quick)
timeout "$(cap 120)" "$PY" -m benchmarks.gpu.bench_gpu "${args[@]}" >"$LOGS/bench_gpu.log" 2>&1 &&
  r=0 || r=$?
grep -E "^\[bench_gpu\]" "$LOGS/bench_gpu.log" | tee -a "$SUMMARY"
case $r in
  0) step_end ok ;;
  124) step_end timeout; FAILED=1 ;;
  *) step_end "FAILED rc $r"; FAILED=1 ;;
esac

step_begin bench_loss
if "$PY" -m benchmarks.training.bench_loss --help 2>/dev/null | grep -qE -- "--paper([^-]|$)"; then
  args=(--paper)
else
  args=(--only paper)
fi
[ "$DRY" = 1 ] && args+=(--quick)
log "python -m benchmarks.training.bench_loss --device $DEV ${args[*]}"
timeout "$(cap 60)" "$PY" -m benchmarks.training.bench_loss --device "$DEV" "${args[@]}" \
  >"$LOGS/bench_loss.log" 2>&1 && r=0 || r=$?
f=$(ls -t "$LOGS"/results/*.json 2>/dev/null | head -n 1)
[ -n "$f" ] && cp "$f" "$OUT/bench_loss.json"
grep -E "^\| " "$LOGS/bench_loss.log" | tail -n 4 | tee -a "$SUMMARY"
case $r in
  0) step_end ok ;;
  124) step_end timeout; FAILED=1 ;;
  *) step_end "FAILED rc $r"; FAILED=1 ;;
esac

# ------------------------------------------------------------------ 5. review checks
step_begin review
args=(--json "$OUT/review_checks.json")
[ "$DRY" = 1 ] && args+=(--dry-run)
timeout "$(cap 45)" "$PY" -m benchmarks.gpu.review_checks "${args[@]}" \
  >"$LOGS/review_checks.log" 2>&1 && r=0 || r=$?
tee -a "$SUMMARY" <"$LOGS/review_checks.log" >/dev/null
case $r in
  0) step_end ok ;;
  124) step_end timeout; FAILED=1 ;;
  *) step_end "FAILED rc $r"; FAILED=1 ;;
esac

# ------------------------------------------------------------------ 6. racecheck, synccheck
for tool in racecheck synccheck; do
  step_begin "$tool"
  if [ "$DRY" = 1 ] || [ -z "$SANITIZER" ]; then
    step_end "skipped ($([ "$DRY" = 1 ] && echo "dry run" || echo "no compute-sanitizer"))"
    continue
  fi
  if [ "$(left)" -lt 30 ]; then step_end "skipped (no time left)"; continue; fi
  timeout "$(cap 60)" "$SANITIZER" --tool "$tool" --error-exitcode 9 --print-limit 20 \
    "$PY" -m benchmarks.gpu.sanitize_smoke --device cuda --no-wrong-metadata \
    >"$LOGS/$tool.log" 2>&1 && r=0 || r=$?
  { echo "== $tool (rc $r)"; grep -E "sanitize_smoke|ERROR SUMMARY|RACECHECK SUMMARY|Barrier|Race" \
      "$LOGS/$tool.log" | head -n 30; } >>"$OUT/sanitizer.txt"
  case $r in
    0) step_end ok ;;
    9) step_end ERRORS; FAILED=1 ;;
    124) step_end timeout ;;
    *) step_end "FAILED rc $r" ;;
  esac
done

# ------------------------------------------------------------------ tables
{
  echo
  "$PY" - "$OUT/bench_gpu.json" <<'EOF' 2>/dev/null
import json, sys
r = json.load(open(sys.argv[1]))
print(r.get("ops", {}).get("table", ""))
print(r.get("targets_table", ""))
for s in r.get("host_sync_failures", []):
    print("HOST SYNC:", s)
EOF
} >>"$SUMMARY"
exit $FAILED
