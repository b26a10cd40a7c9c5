"""The study's summary: per arm, mean ± sd over seeds and the paired (same-seed) differences;
the Markdown report."""

from __future__ import annotations

import math
import statistics
from typing import Any

from benchmarks.study.arms import COMPARISONS


def _stats(xs: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(xs),
        "sd": statistics.stdev(xs) if len(xs) > 1 else 0.0,
        "min": min(xs),
        "max": max(xs),
        "n": len(xs),
    }


def summarize(records: list[dict[str, Any]], arms: list[str]) -> dict[str, Any]:
    """Per arm: mean ± sd over seeds, and the paired (same-seed) difference to ``ce``."""
    by = {a: {r["seed"]: r for r in records if r["arm"] == a} for a in arms}
    metrics = {
        "heldout_ce": lambda r: r["heldout"]["ce"],
        "rouge_l": lambda r: r.get("rouge_l"),
        "heldout_dsa": lambda r: r.get("heldout_dsa"),
        "heldout_hid": lambda r: r.get("heldout_hid"),
        "train_dsa_final": lambda r: r.get("train_dsa_final"),
        "train_hid_final": lambda r: r.get("train_hid_final"),
        "train_kd_final": lambda r: r.get("train_kd_final"),
        "s_per_step": lambda r: r["s_per_step_median"],
    }
    out: dict[str, Any] = {}
    for a in arms:
        runs = by[a]
        if not runs:
            continue
        s: dict[str, Any] = {"seeds": sorted(runs)}
        for m, get in metrics.items():
            vals = [get(r) for r in runs.values()]
            if all(v is not None for v in vals):
                s[m] = _stats([float(v) for v in vals])
        bases = ["ce"] if a != "ce" else []
        bases += [b for x, b in COMPARISONS if x == a]
        for base in bases:
            if not by.get(base):
                continue
            for m in ("heldout_ce", "rouge_l", "heldout_dsa"):
                common = sorted(set(runs) & set(by[base]))
                pairs = [(metrics[m](runs[k]), metrics[m](by[base][k])) for k in common]
                if common and all(x is not None and y is not None for x, y in pairs):
                    s[f"{m}_minus_{base}"] = _stats([x - y for x, y in pairs])
        s["heldout_ppl_of_mean_ce"] = math.exp(s["heldout_ce"]["mean"])
        out[a] = s
    return out


def _fmt(st: dict[str, float] | None, digits: int = 4, signed: bool = False) -> str:
    if not st:
        return "–"
    sign = "+" if signed else ""
    return f"{st['mean']:{sign}.{digits}f} ± {st['sd']:.{digits}f}"


def _verdict(diff: dict[str, float] | None) -> str:
    if not diff or diff["n"] < 3:
        return "n/a (needs ≥ 3 seeds)"
    se = diff["sd"] / math.sqrt(diff["n"])
    if abs(diff["mean"]) <= 2 * se:
        return "no measurable difference"
    return "lower" if diff["mean"] < 0 else "higher"


def markdown(result: dict[str, Any]) -> str:
    cfg, summ = result["config"], result["summary"]
    m = result["machine"]
    lines = [
        f"# Does MTA help? ({'quick smoke run' if cfg['quick'] else 'full run'}, {cfg['device']})",
        "",
        f"Teacher {result['models']['teacher']}; student {result['models']['student']}. "
        f"{cfg['steps']} steps x batch {cfg['batch_size']} x <= {cfg['max_length']} tokens, "
        f"one epoch over the same {result['data']['train_passages']} training passages in every "
        f"run; seeds {cfg['seeds']} (data order + projector init). Held-out: "
        f"{result['data']['eval_passages']} passages "
        f"({result['data']['eval_tokens']} student tokens) for CE and DSA; "
        f"{result['data']['prompts']} prompts x {cfg['gen_tokens']} greedy tokens for ROUGE-L. "
        f"Schedule (teacher, student, units): {result['schedule']}.",
        "",
        f"{m['cpu']}, {m['threads']} threads, torch {m['torch']}, commit {m['git_commit']}, "
        f"{m['date']}; load average at start {result['load_avg_start']}, at end "
        f"{result['load_avg_end']}; total {result['total_s'] / 60:.1f} min "
        f"(spans + teacher cache {result['teacher_cache_s']:.0f} s); process CPU "
        f"time {result['total_cpu_s'] / 60:.1f} min.",
        "",
        "Mean ± sample standard deviation over seeds; Δ = paired (same seed) difference to `ce`. "
        "Lower CE / DSA is better, higher ROUGE-L is better. Verdict: |mean Δ CE| ≤ 2 standard "
        "errors of the paired differences counts as no measurable difference.",
        "",
        "| arm | held-out CE | ppl | Δ CE vs ce | ROUGE-L | Δ ROUGE-L | held-out DSA | "
        "train DSA / Hid / KD (end) | s/step | verdict (CE) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for a, s in summ.items():
        train = " / ".join(
            _fmt(s.get(k), 3) if s.get(k) else "–"
            for k in ("train_dsa_final", "train_hid_final", "train_kd_final")
        )
        lines.append(
            f"| {a} | {_fmt(s.get('heldout_ce'))} | {s['heldout_ppl_of_mean_ce']:.1f} | "
            f"{_fmt(s.get('heldout_ce_minus_ce'), signed=True) if a != 'ce' else '–'} | "
            f"{_fmt(s.get('rouge_l'))} | "
            f"{_fmt(s.get('rouge_l_minus_ce'), signed=True) if a != 'ce' else '–'} | "
            f"{_fmt(s.get('heldout_dsa'), 3)} | {train} | "
            f"{s['s_per_step']['mean']:.2f} | "
            f"{_verdict(s.get('heldout_ce_minus_ce')) if a != 'ce' else '(baseline)'} |"
        )
    paired = [(a, b) for a, b in COMPARISONS if f"heldout_ce_minus_{b}" in summ.get(a, {})]
    if paired:
        lines += [
            "",
            "Paired comparisons besides `ce` (same seed, same data order):",
            "",
            "| arm − base | Δ held-out CE | Δ ROUGE-L | Δ held-out DSA | verdict (CE) |",
            "|---|---|---|---|---|",
        ]
        for a, b in paired:
            s = summ[a]
            lines.append(
                f"| {a} − {b} | {_fmt(s.get(f'heldout_ce_minus_{b}'), signed=True)} | "
                f"{_fmt(s.get(f'rouge_l_minus_{b}'), signed=True)} | "
                f"{_fmt(s.get(f'heldout_dsa_minus_{b}'), 3, signed=True)} | "
                f"{_verdict(s.get(f'heldout_ce_minus_{b}'))} |"
            )
    return "\n".join(lines) + "\n"
