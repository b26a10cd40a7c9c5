"""Proof that the SIMT backend's tests can fail: plant one deliberate bug at a time in a copy of
the CUDA sources, rebuild the SIMT module, and check that the tests catch it.

Each mutant is an exact text replacement in one file of csrc/ (it must match exactly once, so
the list breaks loudly when the code changes). The copy lives in a work folder (default
build/mutants) with a build directory kept across mutants, so only the mutated translation
units recompile. For every mutant the tests that should catch it run with -x against the
mutated build; a mutant whose tests all pass "survived", which fails this script.

Usage: python tools/simt_mutants.py [--only ID ...] [--list] [--work DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SP = "python_tests/test_segment_pool.py"
TS = "python_tests/test_token_salience.py"
RL = "python_tests/test_relational_loss.py"
BACKEND = "python_tests/test_simt_backend.py"
MEMORY = "python_tests/test_simt_memory.py"
RC = "python_tests/test_row_cosine.py"


@dataclass(frozen=True)
class Mutant:
    id: str
    what: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]


MUTANTS = [
    Mutant(
        "gemm-drop-stage-barrier",
        "drop the __syncthreads between staging a K-chunk and reading it (CUDA-core tile GEMM)",
        "csrc/common/simt_tile.cuh",
        "      st.b[k][r] = loadB(r, k0 + k);\n    }\n    __syncthreads();",
        "      st.b[k][r] = loadB(r, k0 + k);\n    }",
        (TS, RL),
    ),
    Mutant(
        "gemm-drop-reuse-barrier",
        "drop the __syncthreads before the next K-chunk overwrites the staging buffer",
        "csrc/common/simt_tile.cuh",
        "        for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];\n    }\n"
        "    __syncthreads();",
        "        for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];\n    }",
        (TS, RL),
    ),
    Mutant(
        "pool-off-by-one",
        "segment_pool forward: the tail loop pools one token past the unit's end",
        "csrc/cuda/segment_pool_cuda.cu",
        "    for (; t < e; ++t) {",
        "    for (; t <= e; ++t) {",
        (SP, MEMORY),
    ),
    Mutant(
        "pool-csr-unsorted",
        "segment_pool backward: skip sorting each token's unit list (summation order then "
        "depends on the thread order)",
        "csrc/cuda/segment_pool_cuda.cu",
        "    cuda::launch(csr_sort_kernel,",
        "    if (false) cuda::launch(csr_sort_kernel,",
        (BACKEND, SP),
    ),
    Mutant(
        "salience-wrong-shuffle-width",
        "token_salience: the row max reduces over 32 lanes (two query rows) instead of 16",
        "csrc/cuda/token_salience_cuda.cu",
        "cuda::warp_max(tmax, 16)",
        "cuda::warp_max(tmax, 32)",
        (TS,),
    ),
    Mutant(
        "salience-missing-diagonal-mask",
        "token_salience: the diagonal (a token attending to itself) is not masked",
        "csrc/cuda/token_salience_cuda.cu",
        "s[j] = (kv[j] && key[j] != q[i])",
        "s[j] = (kv[j])",
        (TS,),
    ),
    Mutant(
        "salience-bound-off-by-one",
        "token_salience column kernel: writes the key one past the sequence end",
        "csrc/cuda/token_salience_cuda.cu",
        "    if (t < T) {",
        "    if (t <= T) {",
        (TS,),
    ),
    Mutant(
        "tiles-wrong-stride",
        "relational_loss tile kernel: E rows written with the tile stride instead of n",
        "csrc/cuda/relational_loss_tiles.cuh",
        "P.E[moff + li * n + lj] = e;",
        "P.E[moff + li * kTile + lj] = e;",
        (RL, MEMORY),
    ),
    Mutant(
        "tiles-drop-column-barrier",
        "relational_loss tile kernel: drop the barrier between writing and reading the column "
        "partials",
        "csrc/cuda/relational_loss_tiles.cuh",
        "red[ty][tx + 16 * j] = side == 0 ? colS[j] : colT[j];\n        __syncthreads();",
        "red[ty][tx + 16 * j] = side == 0 ? colS[j] : colT[j];",
        (RL,),
    ),
    Mutant(
        "tiles-wmma-layout",
        "relational_loss Gram on tensor cores: B fragment loaded row-major (the transpose)",
        "csrc/cuda/relational_loss_tiles.cuh",
        "wmma::fragment<wmma::matrix_b, 16, 16, 16, mma_t, wmma::col_major> fb;",
        "wmma::fragment<wmma::matrix_b, 16, 16, 16, mma_t, wmma::row_major> fb;",
        (RL,),
    ),
    Mutant(
        "plan-wrong-offset",
        "tile plan: the radial offset of each example's row tiles is its E offset",
        "csrc/ops/relational_loss_plan.h",
        "write_row(rows + (off.rows + ti) * kCols, a, n, ti, 0, off.e, off.rad, Tb);",
        "write_row(rows + (off.rows + ti) * kCols, a, n, ti, 0, off.e, off.e, Tb);",
        (RL, MEMORY),
    ),
    Mutant(
        "prep-scale-through-fp32",
        "relational_loss row prep: the power-of-two scale computed in fp32 (fp64 rows beyond "
        "2^126 get an infinite or zero scale)",
        "csrc/cuda/relational_loss_tiles.cuh",
        "    sc = ldexp(acc_t(1), -e);",
        "    sc = static_cast<acc_t>(ldexpf(1.0f, -e));",
        (RL,),
    ),
    Mutant(
        "finalize-missing-factor",
        "relational_loss finalize: the pair-weight denominator counts each pair once",
        "csrc/cuda/relational_loss_rows.cuh",
        "    den += acc_t(2) * pw;",
        "    den += pw;",
        (RL,),
    ),
    Mutant(
        "rowcos-half-warp-sum",
        "row_cosine forward: the warp reduction stops at 16 lanes (each half sums alone)",
        "csrc/cuda/row_cosine_cuda.cu",
        "  for (int off = 16; off > 0; off >>= 1)",
        "  for (int off = 8; off > 0; off >>= 1)",
        (RC,),
    ),
    Mutant(
        "rowcos-unchecked-row",
        "row_cosine: a row index outside h is read instead of giving NaN",
        "csrc/cuda/row_cosine_cuda.cu",
        "  return (r >= 0 && r < M) ? r : -1;",
        "  return r;",
        (MEMORY,),
    ),
]


def _run(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> int:
    with log.open("a") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        return subprocess.run(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT).returncode


def _copy_tree(work: Path) -> Path:
    src = work / "src"
    if src.exists():
        shutil.rmtree(src)
    ignore = shutil.ignore_patterns("build", ".git", ".ci-work", "__pycache__", "*.so", ".venv*")
    # shutil.copy, not copy2: fresh modification times, so the kept build directory recompiles
    # whatever the previous run left mutated (copied mtimes are older than its objects).
    shutil.copytree(ROOT, src, ignore=ignore, copy_function=shutil.copy)
    return src


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", help="mutant ids (default: all)")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--work", default=str(ROOT / "build" / "mutants"))
    args = ap.parse_args()
    if args.list:
        for m in MUTANTS:
            print(f"{m.id:32s} {m.file}: {m.what}")
        return 0
    chosen = [m for m in MUTANTS if not args.only or m.id in args.only]
    unknown = set(args.only or []) - {m.id for m in MUTANTS}
    if unknown:
        print(f"unknown mutant ids: {sorted(unknown)}", file=sys.stderr)
        return 2
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    log = work / "mutants.log"
    log.write_text("")
    src = _copy_tree(work)
    env = dict(
        os.environ, MTA_WITH_CUDA="OFF", MTA_WITH_SIMT="ON", MTA_BUILD_DIR=str(work / "cmake")
    )
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    results = []
    for m in [None, *chosen]:  # None: the unmutated sources must pass first
        t0 = time.time()
        target = src / (m.file if m else "csrc")
        original = target.read_text() if m else None
        if m:
            n = original.count(m.old)
            if n != 1:
                print(f"{m.id}: expected the text once in {m.file}, found {n}", file=sys.stderr)
                return 2
            target.write_text(original.replace(m.old, m.new))
        try:
            if _run(["bash", "tools/dev_build.sh"], src, env, log) != 0:
                outcome = "caught (does not compile)" if m else "BUILD FAILED"
            else:
                tests = m.tests if m else (BACKEND,)
                cmd = [
                    sys.executable,
                    "-m",
                    "pytest",
                    "-x",
                    "-q",
                    "-p",
                    "no:cacheprovider",
                    *tests,
                    "-k",
                    "simt",
                ]
                rc = _run(cmd, src, env, log)
                outcome = (
                    ("caught" if rc != 0 else "SURVIVED") if m else ("ok" if rc == 0 else "FAIL")
                )
        finally:
            if m:
                target.write_text(original)
        name = m.id if m else "(unmutated)"
        results.append((name, outcome, time.time() - t0))
        print(f"{name:32s} {outcome:28s} {time.time() - t0:6.0f} s", flush=True)
        if not m and outcome != "ok":
            print(f"the unmutated sources do not pass: see {log}", file=sys.stderr)
            return 1
    survived = [r for r in results if r[1] == "SURVIVED"]
    print(f"\n{len(results) - 1 - len(survived)} of {len(results) - 1} mutants caught; log: {log}")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
