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

from benchmarks.common import RESULTS_DIR, markdown_table

ROOT = Path(__file__).resolve().parent.parent
OPS_COLUMNS = [
    "op",
    "D",
    "dtype",
    "mta_ext_median_ms",
    "reference_median_ms",
    "speedup_vs_reference",
    "x_of_floor",
    "mta_ext_peak_extra_mib",
    "reference_peak_extra_mib",
]


def _load(name: str) -> dict | None:
    path = RESULTS_DIR / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _machine_line(payload: dict) -> str:
    m = payload["machine"]
    where = m.get("gpu") or f"{m['cpu']}, {m['threads']} threads"
    return f"{where}; torch {m['torch']}; commit {m['git_commit']}; {m['date']}"


def plot_scaling(payload: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        (op, axis, rows) for op, axes in payload["sweeps"].items() for axis, rows in axes.items()
    ]
    if not panels:
        return
    cols = min(3, len(panels))
    nrows = (len(panels) + cols - 1) // cols
    fig, axs = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.4 * nrows), squeeze=False)
    for ax, (op, axis, rows) in zip(axs.flat, panels, strict=False):
        xs = [r[axis] for r in rows]
        for impl, style in (("mta_ext", "o-"), ("reference", "s--"), ("original", "^:")):
            key = f"{impl}_median_ms"
            if all(key in r for r in rows):
                ax.plot(xs, [r[key] for r in rows], style, label=impl)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(axis)
        ax.set_ylabel("ms (median)")
        ax.set_title(f"{op}", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axs.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(_machine_line(payload), fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_speedups(rows: list[dict], title: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if "speedup_vs_reference" in r]
    if not rows:
        return
    keys = ("D", "Dt", "T", "Nb", "dtype")
    labels = [r["op"] + "\n" + ", ".join(f"{k}={r[k]}" for k in keys if k in r) for r in rows]
    vals = [r["speedup_vs_reference"] for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(rows)), 4))
    ax.bar(range(len(rows)), vals, color=["tab:green" if v >= 1 else "tab:red" for v in vals])
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(range(len(rows)), labels, rotation=60, ha="right", fontsize=6)
    ax.set_ylabel("speedup vs reference (x)")
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def build_summary(device: str) -> str:
    parts = []
    ops = _load(f"ops_{device}")
    if ops:
        parts.append(
            f"### Kernels vs the reference ({device})\n\n{_machine_line(ops)}; copy "
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
            parts.append(f"### {name}\n\n{_machine_line(payload)}\n\n{payload['table']}")
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
        plot_speedups(ops["rows"], _machine_line(ops), RESULTS_DIR / f"speedup_{args.device}.png")
    summary = build_summary(args.device)
    (RESULTS_DIR / "SUMMARY.md").write_text(summary + "\n")
    if not args.no_readme:
        update_readme(summary)
    print(summary)


if __name__ == "__main__":
    main()
