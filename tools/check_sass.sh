#!/usr/bin/env bash
# Machine-code check of the CUDA kernels (needs the CUDA toolchain and a CUDA build of torch for
# the headers, never a GPU). Compiles every csrc/cuda/*.cu for one architecture to a cubin (the PTX
# is kept), dumps the SASS, and checks properties that the C++ source alone does not guarantee:
#
#   * segment_pool: every vectorised instantiation (V > 1) of the forward and of the backward
#     gather loads its rows with 16-byte vector loads (PTX ld.global.nc.v4 / .v2, SASS
#     LDG.E.128), at least one per row in flight (forward 4 + 1 tail, gather 2 + 1 tail), and the
#     16-bit instantiations issue no narrow 16-bit global loads at all;
#   * token_salience: the attention logit acc * s_q * s_k is rounded by explicit round-to-nearest
#     multiplies (mul.rn, which ptxas never contracts into an FMA) in BOTH row_stats_kernel and
#     column_kernel, so the two kernels round it identically;
#   * relational_loss: the loss-only and loss+grad tile kernels form the cosines with mul.rn too,
#     so identical student and teacher inputs give an exactly zero difference.
#
# Usage: tools/check_sass.sh [OUTDIR]          (default OUTDIR: build/sass)
# Env:   NVCC (default /usr/local/cuda-13.0/bin/nvcc, else nvcc on PATH), CUOBJDUMP (default: on
#        PATH, else the one shipped with the CUDA venv's triton), MTA_CI_CUDA_VENV (the CUDA torch
#        venv, default ~/.cache/mta_ext/venv-cuda-torch2.14.1), SASS_ARCH (default 90),
#        CSRC (source dir, default csrc/ of this checkout), SASS_REPORT_ONLY=1 (print the counts,
#        never fail: for recording "before" numbers on old sources), SASS_FILES (default: all),
#        SASS_SKIP_COMPILE=1 (re-analyse the files an earlier run left in OUTDIR).
# Exit status: 0 all checks hold; 1 a check failed; 2 a tool is missing or a file did not compile.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
OUTDIR=${1:-$REPO/build/sass}
CSRC=${CSRC:-$REPO/csrc}
ARCH=${SASS_ARCH:-90}
VENV=${MTA_CI_CUDA_VENV:-$HOME/.cache/mta_ext/venv-cuda-torch2.14.1}
mkdir -p "$OUTDIR"

NVCC=${NVCC:-}
if [ -z "$NVCC" ]; then
  if [ -x /usr/local/cuda-13.0/bin/nvcc ]; then NVCC=/usr/local/cuda-13.0/bin/nvcc
  else NVCC=$(command -v nvcc || true); fi
fi
[ -n "$NVCC" ] && [ -x "$NVCC" ] || { echo "check_sass: no nvcc (set NVCC)"; exit 2; }
CUOBJDUMP=${CUOBJDUMP:-$(command -v cuobjdump || true)}
if [ -z "$CUOBJDUMP" ]; then
  CUOBJDUMP=$(ls "$VENV"/lib/python3*/site-packages/triton/backends/nvidia/bin/cuobjdump 2>/dev/null | head -n 1 || true)
fi
[ -n "$CUOBJDUMP" ] || { echo "check_sass: no cuobjdump (set CUOBJDUMP)"; exit 2; }
TORCH_DIR=$(ls -d "$VENV"/lib/python3*/site-packages/torch 2>/dev/null | head -n 1 || true)
[ -n "$TORCH_DIR" ] && [ -d "$TORCH_DIR/include" ] ||
  { echo "check_sass: no CUDA torch headers under $VENV (set MTA_CI_CUDA_VENV)"; exit 2; }
echo "check_sass: nvcc $("$NVCC" --version | grep -o 'release [0-9.]*'), sm_$ARCH, sources $CSRC"

files=${SASS_FILES:-$(cd "$CSRC/cuda" && ls ./*.cu | sed 's|^\./||')}
for f in $files; do
  [ "${SASS_SKIP_COMPILE:-0}" = 1 ] && break  # analyse the outputs of an earlier run only
  stem=${f%.cu}
  keep=$OUTDIR/keep_$stem
  mkdir -p "$keep"
  t0=$(date +%s)
  # The flags of CMakeLists.txt's CUDA compile, device side only.
  if ! "$NVCC" -cubin -arch="sm_$ARCH" -O3 --expt-relaxed-constexpr -std=c++20 -lineinfo \
      -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ \
      -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__ -DMTA_WITH_CUDA=1 \
      -D_GLIBCXX_USE_CXX11_ABI=1 -I"$CSRC" -isystem "$TORCH_DIR/include" \
      -isystem "$TORCH_DIR/include/torch/csrc/api/include" -Xptxas -v \
      -keep -keep-dir "$keep" -o "$OUTDIR/$stem.cubin" "$CSRC/cuda/$f" \
      >"$OUTDIR/$stem.ptxas.txt" 2>&1; then
    tail -n 30 "$OUTDIR/$stem.ptxas.txt"
    echo "check_sass: $f did not compile"
    exit 2
  fi
  cp "$(ls -S "$keep"/*.ptx | head -n 1)" "$OUTDIR/$stem.ptx"
  "$CUOBJDUMP" --dump-sass "$OUTDIR/$stem.cubin" >"$OUTDIR/$stem.sass"
  echo "check_sass: $f compiled in $(($(date +%s) - t0)) s"
done

python3 - "$OUTDIR" "${SASS_REPORT_ONLY:-0}" $files <<'EOF'
import re, subprocess, sys

outdir, report_only, files = sys.argv[1], sys.argv[2] == "1", sys.argv[3:]


def demangle(names):
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True)
    return dict(zip(names, out.stdout.splitlines()))


def ptx_entries(text):
    # name -> body of each .entry (up to the next .entry / .func / end).
    parts = re.split(r"^\s*(?:\.(?:visible|weak|extern)\s+)*\.(?:entry|func)\s+", text, flags=re.M)
    out = {}
    for p in parts[1:]:
        m = re.match(r"[^\s(]+", p)
        out[m.group(0)] = p
    return out


def sass_functions(text):
    out, name = {}, None
    for line in text.splitlines():
        m = re.match(r"\s*Function : (\S+)", line)
        if m:
            name = m.group(1)
            out[name] = []
        elif name:
            out[name].append(line)
    return {k: "\n".join(v) for k, v in out.items()}


def count(pattern, text):
    return len(re.findall(pattern, text))


failures, rows = [], []
for f in files:
    stem = f[:-3]
    ptx = ptx_entries(open(f"{outdir}/{stem}.ptx").read())
    sass = sass_functions(open(f"{outdir}/{stem}.sass").read())
    names = demangle(sorted(set(ptx) | set(sass)))
    for mangled in sorted(m for m in ptx if m in sass):  # kernels (entries), not device funcs
        pretty = names.get(mangled, mangled)
        body, sbody = ptx[mangled], sass.get(mangled, "")
        vec = count(r"ld\.global\.nc\.v[24]\.", body)
        narrow16 = count(r"ld\.global\.nc\.[ub]16", body)
        mulrn = count(r"mul\.rn\.f(32|64)", body)
        ffma, fmul = count(r"\b[FD]FMA\b", sbody), count(r"\b[FD]MUL\b", sbody)
        ldg128 = count(r"LDG\.E\.128", sbody)
        short = pretty.replace("mta_ext::(anonymous namespace)::", "").replace("void ", "")
        short = re.sub(r"\(.*", "", short).replace("c10::", "")
        rows.append((short, vec, ldg128, narrow16, mulrn, ffma, fmul))
        m = re.search(r"(pool_fwd_kernel|pool_bwd_gather_kernel)<([^,]+), ([^,]+), (\d+)>", pretty)
        if m and int(m.group(4)) > 1:
            need = 5 if m.group(1) == "pool_fwd_kernel" else 3
            sixteen = m.group(2) in ("c10::Half", "c10::BFloat16")
            if vec < need or ldg128 < need or (sixteen and narrow16):
                failures.append(f"{short}: {vec} vector loads in PTX / {ldg128} LDG.E.128 in SASS "
                                f"(need >= {need}), {narrow16} narrow 16-bit loads (need 0)")
        if re.search(r"(row_stats_kernel|column_kernel)<", pretty) and mulrn < 32:
            failures.append(f"{short}: {mulrn} mul.rn (need >= 32: the logit must not be contracted)")
        m = re.search(r"tile_kernel<[^>]*, (\d+), (true|false)>", pretty)
        if m and m.group(1) != "1" and mulrn < 32:
            failures.append(f"{short}: {mulrn} mul.rn (need >= 32: cS - cT must not be contracted)")

w = max(len(r[0]) for r in rows)
print(f"{'kernel':<{w}} {'ptx.v2/v4':>9} {'LDG.128':>7} {'ptx.16b':>7} {'mul.rn':>6} {'FFMA':>5} {'FMUL':>5}")
for r in rows:
    print(f"{r[0]:<{w}} {r[1]:>9} {r[2]:>7} {r[3]:>7} {r[4]:>6} {r[5]:>5} {r[6]:>5}")
for x in failures:
    print("FAIL:", x)
if failures and not report_only:
    sys.exit(1)
print("check_sass:", "report only" if report_only else "all checks hold",
      f"({len(failures)} findings)" if failures else "")
EOF
