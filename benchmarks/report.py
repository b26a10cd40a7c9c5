"""Regenerate the performance summary, plots and the README's performance table from
``benchmarks/results/*.json`` (one command, no re-measuring):

    python -m benchmarks.report [--device cpu]

Writes ``benchmarks/results/SUMMARY.md``, ``benchmarks/results/scaling_<device>.png``,
``benchmarks/results/speedup_<device>.png`` and rewrites the block between
``<!-- perf:start -->`` and ``<!-- perf:end -->`` in README.md.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from benchmarks.common import OPS_COLUMNS, RESULTS_DIR, machine_line, markdown_table
from benchmarks.plots import plot_scaling, plot_speedups

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str) -> dict | None:
    path = RESULTS_DIR / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def build_summary(device: str) -> str:
    parts = []
    ops = _load(f"ops_{device}")
    if ops:
        parts.append(
            f"### Kernels vs the reference ({device})\n\n{machine_line(ops)}; copy "
            f"bandwidth {ops['copy_bandwidth_GBps']:.2f} GB/s (measured in the same run)."
            f" Median of {ops['repeats']} runs after warm-up; fwd+bwd; "
            "peak extra = peak resident memory above the pre-run level.\n"
        )
        cols = [c for c in OPS_COLUMNS if any(c in r for r in ops["rows"])]
        parts.append(markdown_table(ops["rows"], cols))
    for extra in sorted(RESULTS_DIR.glob(f"*_{device}.json")):
        name = extra.stem
        if name.startswith(("ops_", "scaling_")):
            continue
        payload = json.loads(extra.read_text())
        if "table" in payload:
            parts.append(f"### {name}\n\n{machine_line(payload)}\n\n{payload['table']}")
    if (RESULTS_DIR / f"scaling_{device}.png").exists():
        parts.append(f"![scaling](benchmarks/results/scaling_{device}.png)\n")
    if (RESULTS_DIR / f"speedup_{device}.png").exists():
        parts.append(f"![speedups](benchmarks/results/speedup_{device}.png)\n")
    return "\n".join(parts)


def update_readme(summary: str) -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    pattern = re.compile(r"(<!-- perf:start -->\n).*?(<!-- perf:end -->)", re.S)
    if not pattern.search(text):
        print("README.md has no perf markers; not updated")
        return
    readme.write_text(pattern.sub(lambda m: m.group(1) + summary + "\n" + m.group(2), text))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-readme", action="store_true")
    args = p.parse_args(argv)
    scaling = _load(f"scaling_{args.device}")
    if scaling:
        plot_scaling(scaling, RESULTS_DIR / f"scaling_{args.device}.png")
    ops = _load(f"ops_{args.device}")
    if ops:
        plot_speedups(ops["rows"], machine_line(ops), RESULTS_DIR / f"speedup_{args.device}.png")
    summary = build_summary(args.device)
    (RESULTS_DIR / "SUMMARY.md").write_text(summary + "\n")
    if not args.no_readme:
        update_readme(summary)
    print(summary)


if __name__ == "__main__":
    main()
