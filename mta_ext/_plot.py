"""The demo's report figure: training curves and the held-out result of every run.

Panels: the student's training CE (raw per-batch values faint, a smoothed curve on top), the
held-out CE before / after training for each run (the outcome that matters), and the two MTA
terms, DSA and Hid, each on its own axis (their scales differ by ~20x).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

# One colour + line style + marker per run, in order; "ce+mta" first, "ce only" second.
_STYLES = [
    {"color": "#1f5fa8", "linestyle": "-", "marker": "o"},
    {"color": "#d9641c", "linestyle": "--", "marker": "s"},
    {"color": "#2e8b57", "linestyle": "-.", "marker": "^"},
    {"color": "#7b3fa0", "linestyle": ":", "marker": "D"},
]


def smooth(values: Sequence[float], span: int | None = None) -> list[float]:
    """Bias-corrected exponential moving average (as TensorBoard draws it).

    ``span``: the EMA's effective window, default ``len(values) / 4`` clamped to [1, 50]; a
    span of 1 returns the values unchanged.
    """
    n = len(values)
    if span is None:
        span = max(1, min(50, n // 4))
    if span <= 1:
        return [float(v) for v in values]
    beta = 1.0 - 2.0 / (span + 1.0)
    out, acc, norm = [], 0.0, 0.0
    for v in values:
        acc = beta * acc + (1.0 - beta) * float(v)
        norm = beta * norm + (1.0 - beta)
        out.append(acc / norm)
    return out


def _curve(ax, steps, values, style, label, *, raw_label=True) -> None:
    smoothed = smooth(values)
    if len(values) > 1 and smoothed != list(values):
        ax.plot(steps, values, color=style["color"], lw=0.8, alpha=0.3, ls="-")
        ax.plot(steps, smoothed, color=style["color"], ls=style["linestyle"], lw=2.2, label=label)
    else:  # too few steps to smooth: points joined by a line
        ax.plot(
            steps,
            values,
            color=style["color"],
            ls=style["linestyle"],
            marker=style["marker"],
            lw=2,
            label=label,
        )


def _steps_axis(ax, last_step: int) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=8, min_n_ticks=1))
    margin = 0.5 if last_step <= 30 else 0.01 * last_step  # keep end markers inside the axes
    ax.set_xlim(1 - margin, max(last_step, 1) + margin)
    ax.set_xlabel("optimizer step")
    ax.grid(True, alpha=0.3)


def _heldout_panel(ax, runs: Sequence[str], heldout: Mapping[str, Mapping[str, float]]) -> None:
    """One row per run: an arrow from the held-out CE before training to the CE after it."""
    before = heldout.get("before")
    rows = [
        (i, name, heldout[key])
        for i, name in enumerate(runs)
        if (key := f"after_{name.replace(' ', '_')}") in heldout
    ]
    if before is None or not rows:
        ax.text(0.5, 0.5, "no held-out evaluation", ha="center", va="center")
        ax.axis("off")
        return
    b = before["ce"]
    values = [b] + [r["ce"] for _, _, r in rows]
    lo, hi = min(values), max(values)
    pad = max((hi - lo) * 0.15, 0.01)
    for row, (i, _name, after) in enumerate(rows):
        style = _STYLES[i % len(_STYLES)]
        y = len(rows) - 1 - row
        a = after["ce"]
        ax.annotate(
            "",
            xy=(a, y),
            xytext=(b, y),
            arrowprops={"arrowstyle": "-|>", "color": style["color"], "lw": 2, "ls": "-"},
        )
        ax.plot([b], [y], "o", color="white", mec=style["color"], mew=2, ms=8, zorder=3)
        ax.plot([a], [y], style["marker"], color=style["color"], ms=8, zorder=3)
        ax.annotate(
            f"{b:.4f} → {a:.4f}  ({a - b:+.4f})",
            ((a + b) / 2, y),
            xytext=(0, 9),
            textcoords="offset points",
            ha="center",
            color=style["color"],
            fontsize=10,
        )
    ax.set_yticks(range(len(rows)), [name for _, name, _ in reversed(rows)])
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_xlabel("held-out cross-entropy (nats/token; lower is better)")
    ax.set_title(f"held-out CE: before (○) → after training ({int(before['tokens'])} tokens)")
    ax.grid(True, axis="x", alpha=0.3)


def plot_runs(
    path: str | Path,
    runs: Mapping[str, Sequence[Mapping[str, float]]],
    heldout: Mapping[str, Mapping[str, float]],
    *,
    title: str = "",
) -> None:
    """Write the report figure to ``path`` (PNG).

    Args:
        runs: run name -> per-step rows (``step``, ``ce`` and, for MTA runs, ``dsa``/``hid``).
        heldout: ``{"before": {"ce", "tokens", ...}, "after_<run name, spaces as _>": ...}``.
        title: the figure's title (e.g. the model pair and the run length).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(runs)
    styles = {n: _STYLES[i % len(_STYLES)] for i, n in enumerate(names)}
    terms = [k for k in ("dsa", "hid") if any(hist and k in hist[0] for hist in runs.values())]
    rows = 2 if terms else 1
    fig, axes = plt.subplots(rows, 2, figsize=(11, 4.2 * rows), squeeze=False)
    last = max((int(h[-1]["step"]) for h in runs.values() if h), default=1)

    ax = axes[0][0]
    for name, hist in runs.items():
        if hist:
            steps = [int(h["step"]) for h in hist]
            _curve(ax, steps, [h["ce"] for h in hist], styles[name], name)
    _steps_axis(ax, last)
    ax.set_ylabel("student cross-entropy (nats/token)")
    longest = max((len(h) for h in runs.values()), default=0)
    smoothed = len(smooth([0.0] * longest)) and smooth(list(range(longest))) != list(range(longest))
    ax.set_title("training CE per batch" + (" (faint: raw, bold: smoothed)" if smoothed else ""))
    if ax.lines:
        ax.legend(loc="best")

    _heldout_panel(axes[0][1], names, heldout)

    labels = {
        "dsa": ("DSA: relational loss (mean over layer pairs)", "DSA loss"),
        "hid": ("Hid: 1 − cos(projected student, teacher)", "Hid loss"),
    }
    for j, key in enumerate(terms):
        ax = axes[1][j]
        for name, hist in runs.items():
            if hist and key in hist[0]:
                steps = [int(h["step"]) for h in hist]
                _curve(ax, steps, [h[key] for h in hist], styles[name], name)
        vals = [h[key] for hist in runs.values() for h in hist if key in h]
        positive = [v for v in vals if v > 0 and math.isfinite(v)]
        if len(positive) == len(vals) and positive and max(positive) / min(positive) > 20:
            ax.set_yscale("log")
        _steps_axis(ax, last)
        ax.set_title(labels[key][0])
        ax.set_ylabel(labels[key][1])
    if rows == 2 and len(terms) == 1:
        axes[1][1].axis("off")
    if title:
        fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
