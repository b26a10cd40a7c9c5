"""Benchmark every mta_ext op against its pure-PyTorch reference, in one run.

    python -m benchmarks.ops.bench_ops [--quick] [--device cpu|cuda] [--repeats 20] [--only NAME]

Prints one line per case, then a Markdown table, and writes
``benchmarks/results/ops_<device>.json`` (machine, copy bandwidth, every row). The mta_ext calls
pass their host metadata (``num_incidences`` / ``plan_sizes``, computed once per input set on the
CPU), as ``structural_loss`` does; one labelled row per op times the raw-op fallback without it.
The ``host_sync`` column: one call with host syncs forbidden (benchmarks/common.py).
``benchmarks/gpu/bench_gpu.py`` runs the same cases on a GPU (``run_ops``) next to its ceilings and
targets, so the CPU and GPU tables compare row for row.
"""

from __future__ import annotations

import argparse
import importlib

import torch

from benchmarks.common import (
    OPS_COLUMNS,
    copy_bandwidth,
    machine_info,
    markdown_table,
    run_cases,
    write_results,
)

# One module per op in this folder (mirrors mta_ext/ops/).
OP_MODULES = ["segment_pool", "token_salience", "relational_loss", "row_cosine"]


def run_ops(
    device: str,
    *,
    quick: bool = False,
    repeats: int = 20,
    warmup: int = 3,
    only: str | None = None,
    copy_bw: float | None = None,
) -> dict:
    """Run every op module's cases on ``device``; returns the results payload (machine, copy
    bandwidth, rows, Markdown table). ``copy_bw`` (bytes/s) reuses a bandwidth measured by the
    caller (bench_gpu measures its ceilings once)."""
    info = machine_info(device)
    bw = copy_bw or copy_bandwidth(device)
    where = info["cpu"] if device == "cpu" else info.get("gpu")
    print(
        f"# {where}, threads={info['threads']}, torch {info['torch']}, "
        f"copy bandwidth {bw / 1e9:.2f} GB/s",
        flush=True,
    )
    rows = []
    for name in OP_MODULES:
        if only and name != only:
            continue
        mod = importlib.import_module(f"benchmarks.ops.{name}")
        rows += run_cases(mod.cases(device, quick), device=device, repeats=repeats, warmup=warmup)
    for r in rows:
        if "floor_mib" in r:
            floor_ms = r["floor_mib"] * 2**20 / bw * 1e3
            r["floor_ms"] = floor_ms
            r["x_of_floor"] = r["mta_ext_median_ms"] / floor_ms
    table = markdown_table(rows, [c for c in OPS_COLUMNS if any(c in r for r in rows)])
    print(table)
    return {
        "machine": info,
        "copy_bandwidth_GBps": bw / 1e9,
        "quick": quick,
        "repeats": repeats,
        "rows": rows,
        "table": table,
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="CI-sized smoke run (no speed claims)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--only", default=None, help="run only this op module")
    p.add_argument("--name", default=None, help="results file stem (default ops_<device>)")
    args = p.parse_args(argv)
    repeats = min(args.repeats, 5) if args.quick else args.repeats
    payload = run_ops(
        args.device, quick=args.quick, repeats=repeats, warmup=args.warmup, only=args.only
    )
    name = args.name or f"ops_{args.device}{'_quick' if args.quick else ''}"
    print("wrote", write_results(name, payload))
    return payload


if __name__ == "__main__":
    main()
