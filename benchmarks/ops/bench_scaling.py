"""Scaling sweeps: how each op's cost grows (tokens, units per example, width).

    python -m benchmarks.ops.bench_scaling [--quick] [--device cpu|cuda] [--only OP]

Every op module in benchmarks/ops/ may expose ``sweeps(device, quick) -> {axis: [Case]}``;
each point times the extension and the reference in the same run. Writes
``benchmarks/results/scaling_<device>.json``.
"""

from __future__ import annotations

import argparse
import importlib

import torch

from benchmarks.common import machine_info, run_cases, write_results
from benchmarks.ops.bench_ops import OP_MODULES

# Sweeps that are not single ops (the full structural_loss), as module paths.
EXTRA_MODULES = ["benchmarks.training.bench_loss"]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--only", default=None)
    p.add_argument("--name", default=None)
    args = p.parse_args(argv)
    repeats = min(args.repeats, 3) if args.quick else args.repeats
    sweeps: dict[str, dict[str, list[dict]]] = {}
    for module in [f"benchmarks.ops.{n}" for n in OP_MODULES] + EXTRA_MODULES:
        name = module.rsplit(".", 1)[-1]
        if args.only and name != args.only:
            continue
        mod = importlib.import_module(module)
        if not hasattr(mod, "sweeps"):
            continue
        for axis, cases in mod.sweeps(args.device, args.quick).items():
            print(f"## {name}: vs {axis}", flush=True)
            rows = run_cases(cases, device=args.device, repeats=repeats, warmup=2)
            sweeps.setdefault(rows[0]["op"] if rows else name, {})[axis] = rows
    payload = {
        "machine": machine_info(args.device),
        "quick": args.quick,
        "repeats": repeats,
        "sweeps": sweeps,
    }
    name = args.name or f"scaling_{args.device}{'_quick' if args.quick else ''}"
    print("wrote", write_results(name, payload))
    return payload


if __name__ == "__main__":
    main()
