"""Run every benchmark in one go, then regenerate the report.

    python -m benchmarks [--quick] [--device cpu|cuda] [--skip NAME ...]

``--quick`` is CI-sized (a few minutes, smoke only: no assertion on speed or outcome, results
go to *_quick.* files and do not touch the README); it includes the distillation-quality study
``benchmarks.study.quality``, whose full run (~1 h on 2 cores) runs only on its own
(``python -m benchmarks.study.quality``). The full mode writes the JSON files that
``python -m benchmarks.report`` turns into the README's table and plots.
"""

from __future__ import annotations

import argparse
import importlib
import time

import torch

# Modules under benchmarks/ in run order; modules that are missing (optional deps) are skipped.
# ``--skip`` takes a module's path (``ops.bench_ops``) or its last part (``bench_ops``).
BENCHES = [
    "ops.bench_ops",
    "ops.bench_scaling",
    "training.bench_loss",
    "training.bench_align",
    "training.bench_step",
    "training.bench_onpolicy",
    "training.bench_kd",
    "training.bench_data",
    "study.quality",
]
# Run only with --quick here (their full runs are long and started on their own).
QUICK_ONLY = {"study.quality"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--skip", nargs="*", default=[])
    args = p.parse_args()
    for name in BENCHES:
        if name in args.skip or name.rsplit(".", 1)[-1] in args.skip:
            continue
        if name in QUICK_ONLY and not args.quick:
            print(f"[skip] {name}: full run on its own: python -m benchmarks.{name}")
            continue
        try:
            mod = importlib.import_module(f"benchmarks.{name}")
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("benchmarks."):
                print(f"[skip] {name}: not present")
                continue
            raise
        t0 = time.perf_counter()
        print(f"\n######## {name}", flush=True)
        argv = ["--device", args.device] + (["--quick"] if args.quick else [])
        mod.main(argv)
        print(f"######## {name} took {time.perf_counter() - t0:.1f} s", flush=True)
    if not args.quick:
        from benchmarks import report

        report.main(["--device", args.device])


if __name__ == "__main__":
    main()
