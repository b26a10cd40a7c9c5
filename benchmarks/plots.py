"""Every figure the benchmarks draw, in one place (the CLI demo's figure is ``mta_ext._plot``).

* ``plot_scaling`` / ``plot_speedups``: the ops' scaling sweeps and speedups over the reference
  (``python -m benchmarks.report``: ``benchmarks/results/{scaling,speedup}_<device>.png``);
* ``plot_study``: the distillation study's panels (``python -m benchmarks.study.quality``:
  ``benchmarks/results/quality_<device>[_quick].png``).

matplotlib (the ``test`` extra) is imported only when a figure is drawn, with the Agg backend.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import machine_line


def _pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_scaling(payload: dict, out: Path) -> None:
    plt = _pyplot()

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
    fig.suptitle(machine_line(payload), fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_speedups(rows: list[dict], title: str, out: Path) -> None:
    plt = _pyplot()

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


def plot_study(result: dict[str, Any], path: Path) -> None:
    """The study's figure (``benchmarks.study.quality``), 2 x 3 panels: held-out CE, its
    paired difference to ``ce``, ROUGE-L; training CE, its paired difference to ``ce`` (running
    mean), held-out DSA. Dots are seeds, diamonds mean ± sd.
    """
    plt = _pyplot()
    import matplotlib.ticker

    summ, recs = result["summary"], result["runs"]
    arms = list(summ)
    colors = {a: plt.get_cmap("tab10")(i) for i, a in enumerate(arms)}
    by = {a: {r["seed"]: r for r in recs if r["arm"] == a} for a in arms}
    getters: dict[str, Callable[[dict[str, Any]], Any]] = {
        "heldout_ce": lambda r: r["heldout"]["ce"],
        "rouge_l": lambda r: r.get("rouge_l"),
        "heldout_dsa": lambda r: r.get("heldout_dsa"),
    }

    def values(a: str, key: str, paired: bool) -> list[float]:
        out = []
        for seed, r in sorted(by[a].items()):
            v = getters[key](r)
            if paired:
                base = by.get("ce", {}).get(seed)
                if base is None or v is None:
                    continue
                v = v - getters[key](base)
            if v is not None:
                out.append(float(v))
        return out

    fig, axes = plt.subplots(2, 3, figsize=(17, 9))
    panels = [
        (axes[0, 0], "heldout_ce", False, "held-out student CE (lower is better)"),
        (axes[0, 1], "heldout_ce", True, "held-out CE minus the ce arm's, same seed"),
        (axes[0, 2], "rouge_l", False, "ROUGE-L F1, greedy continuations (higher is better)"),
        (axes[1, 2], "heldout_dsa", False, "held-out DSA vs the teacher (lower = closer)"),
    ]
    for ax, key, paired, title in panels:
        shown = [a for a in arms if not (paired and a == "ce")]
        for i, a in enumerate(shown):
            vals = values(a, key, paired)
            if not vals:
                continue
            jit = [i - 0.1 + 0.1 * (j - (len(vals) - 1) / 2) for j in range(len(vals))]
            ax.scatter(jit, vals, color=colors[a], alpha=0.65, s=30, zorder=3)
            mean = statistics.fmean(vals)
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            ax.errorbar(
                i + 0.25, mean, yerr=sd, fmt="D", color=colors[a], capsize=5, ms=7, zorder=4
            )
        if paired:
            ax.axhline(0.0, color="black", lw=0.8)
        ax.set_xticks(range(len(shown)), shown)
        ax.set_xlim(-0.6, len(shown) - 0.4)
        ax.set_title(title, fontsize=11)
        ax.grid(axis="y", alpha=0.3)

    def mean_curve(a: str, key: str = "ce") -> list[float]:
        hs = [r["history"] for r in by[a].values()]
        n = min(len(h) for h in hs)
        return [statistics.fmean(h[i][key] for h in hs) for i in range(n)]

    def smooth(xs: list[float]) -> list[float]:
        w = max(1, len(xs) // 15)
        return [statistics.fmean(xs[max(0, i - w + 1) : i + 1]) for i in range(len(xs))]

    ax = axes[1, 0]
    for a in arms:
        c = smooth(mean_curve(a))
        ax.plot(range(1, len(c) + 1), c, color=colors[a], label=a, lw=1.6)
    ax.set_yscale("log")
    fmt = matplotlib.ticker.FormatStrFormatter("%.0f")
    ax.yaxis.set_major_formatter(fmt)
    ax.yaxis.set_minor_formatter(fmt)
    ax.set_title("training CE (mean over seeds, running mean; log scale)", fontsize=11)
    ax.set_xlabel("step")
    ax.legend(fontsize=9)
    ax.grid(alpha=0.3)
    ax = axes[1, 1]
    if by.get("ce"):
        for a in arms:
            if a == "ce":
                continue
            seeds = sorted(set(by[a]) & set(by["ce"]))
            if not seeds:
                continue
            n = min(len(by[x][s]["history"]) for x in (a, "ce") for s in seeds)
            d = [
                statistics.fmean(
                    by[a][s]["history"][i]["ce"] - by["ce"][s]["history"][i]["ce"] for s in seeds
                )
                for i in range(n)
            ]
            d = smooth(d)
            ax.plot(range(1, n + 1), d, color=colors[a], label=a, lw=1.6)
        ax.axhline(0.0, color="black", lw=0.8)
        ax.legend(fontsize=9)
    ax.set_title("training CE minus the ce arm's (same seed and batch)", fontsize=11)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    cfg = result["config"]
    fig.suptitle(
        f"Does MTA help? {result['models']['teacher']} -> {result['models']['student']}; "
        f"{cfg['steps']} steps x batch {cfg['batch_size']}, seeds {cfg['seeds']} "
        "(dots: seeds; diamonds: mean ± sd)",
        fontsize=12,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
