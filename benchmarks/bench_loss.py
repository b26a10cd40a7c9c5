"""structural_loss forward+backward: mta_ext vs (a) the reference vs (b) the original MTA code.

    python -m benchmarks.bench_loss [--quick] [--device cpu|cuda] [--repeats 20]

Realistic shapes: B examples, teacher T_t / student T_s tokens with ragged right padding,
D_t = 640 / D_s = 576 (Gemma-3-270M / SmolLM2-135M widths), 3 layer pairs (1 word + 2 phrase),
salience weighting, Hid on (nn.Linear(D_s, D_t) per pair). Units: word units of 1-3 tokens on
each side covering ~80% of the valid tokens, phrase units of 2-4 consecutive words.

(a) ``mta_ext.reference.structural_loss``: per-example Python loops (oracle).
(b) ``mta_ext.reference.structural_loss_original``: the original code's approach (dense
    [B,T,T] salience, dense [N, B*T] token x span membership pooling, one N x N Gram matrix
    masked to same-example pairs, Python loop over layers).

Peak memory: the extra peak RSS (VmHWM, reset via /proc/self/clear_refs) of one fwd+bwd above
the resident level before it (benchmarks/common.py); inputs are not counted.
Times: wall-clock medians (the harness), and on CPU also medians of process CPU time (all
threads), which on a shared, loaded machine measure the work rather than the wait for a core.
Writes ``benchmarks/results/loss_<device>.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from types import SimpleNamespace

import torch
from torch import nn

import mta_ext
from benchmarks.common import Case, machine_info, markdown_table, run_cases, write_results
from mta_ext import reference

IMPLS = ("mta_ext", "reference", "original")


def _units(B: int, Tt: int, Ts: int, len_t, len_s, gen: torch.Generator):
    """Word and phrase layouts: monotone word runs on both sides, phrases = 2-4 word groups."""
    words = {"cu": [0], "t": [], "s": []}
    phrases = {"cu": [0], "t": [], "s": []}
    for b in range(B):
        pt, ps = 0, 0
        ex_words = []
        while True:
            lt = int(torch.randint(1, 4, (1,), generator=gen))
            ls = int(torch.randint(1, 4, (1,), generator=gen))
            gap_t = int(torch.rand(1, generator=gen) < 0.2)  # ~20% tokens in no unit
            gap_s = int(torch.rand(1, generator=gen) < 0.2)
            if pt + gap_t + lt > len_t[b] or ps + gap_s + ls > len_s[b]:
                break
            pt, ps = pt + gap_t, ps + gap_s
            ex_words.append(((b * Tt + pt, b * Tt + pt + lt), (b * Ts + ps, b * Ts + ps + ls)))
            pt, ps = pt + lt, ps + ls
        for wt, ws in ex_words:
            words["t"].append(wt)
            words["s"].append(ws)
        words["cu"].append(len(words["t"]))
        i = 0
        while i < len(ex_words):
            k = int(torch.randint(2, 5, (1,), generator=gen))
            grp = ex_words[i : i + k]
            phrases["t"].append((grp[0][0][0], grp[-1][0][1]))
            phrases["s"].append((grp[0][1][0], grp[-1][1][1]))
            i += k + int(torch.randint(0, 3, (1,), generator=gen))  # words outside phrases
        phrases["cu"].append(len(phrases["t"]))

    def lay(d):
        return SimpleNamespace(
            cu_units=torch.tensor(d["cu"], dtype=torch.long),
            teacher_ranges=torch.tensor(d["t"], dtype=torch.long).reshape(-1, 2),
            student_ranges=torch.tensor(d["s"], dtype=torch.long).reshape(-1, 2),
        )

    return {"word": lay(words), "phrase": lay(phrases)}


def _case(B: int, Tt: int, Ts: int, Dt: int, Ds: int, device: str, dtype=torch.float32) -> Case:
    gen = torch.Generator().manual_seed(0)
    len_t = torch.randint(int(0.8 * Tt), Tt + 1, (B,), generator=gen).tolist()
    len_s = torch.randint(int(0.8 * Ts), Ts + 1, (B,), generator=gen).tolist()
    mask_t = (torch.arange(Tt)[None] < torch.tensor(len_t)[:, None]).long()
    mask_s = (torch.arange(Ts)[None] < torch.tensor(len_s)[:, None]).long()
    units = _units(B, Tt, Ts, len_t, len_s, gen)
    for lay in units.values():
        for k in ("cu_units", "teacher_ranges", "student_ranges"):
            setattr(lay, k, getattr(lay, k).to(device))
    alignment = SimpleNamespace(
        units=units,
        teacher={"attention_mask": mask_t.to(device)},
        student={"attention_mask": mask_s.to(device)},
    )
    n_layers = 4
    t_hs = tuple(
        torch.randn(B, Tt, Dt, generator=gen).to(dtype).to(device) for _ in range(n_layers)
    )
    s_hs0 = tuple(
        torch.randn(B, Ts, Ds, generator=gen).to(dtype).to(device) for _ in range(n_layers)
    )
    schedule = mta_ext.LayerSchedule([(1, 1, "word"), (2, 2, "phrase"), (3, 3, "phrase")])
    torch.manual_seed(0)
    projectors = nn.ModuleList(nn.Linear(Ds, Dt) for _ in range(3)).to(device).to(dtype)

    def make(impl):
        s_hs = tuple(h.clone().requires_grad_() for h in s_hs0)
        if impl == "mta_ext":
            fn = mta_ext.structural_loss
        elif impl == "reference":
            fn = reference.structural_loss
        else:
            fn = reference.structural_loss_original

        def run():
            for h in s_hs:
                h.grad = None
            projectors.zero_grad(set_to_none=True)
            fn(s_hs, t_hs, alignment, schedule, projectors=projectors).backward()

        return run

    params = {
        "B": B,
        "T_t": Tt,
        "T_s": Ts,
        "D_t": Dt,
        "D_s": Ds,
        "words": int(units["word"].cu_units[-1]),
        "phrases": int(units["phrase"].cu_units[-1]),
        "dtype": str(dtype).replace("torch.", ""),
    }
    return Case("structural_loss fwd+bwd", params, make, impls=IMPLS)


def cases(device: str, quick: bool) -> list[Case]:
    if quick:
        return [_case(2, 128, 120, 640, 576, device)]
    return [_case(8, 512, 512, 640, 576, device)]


def sweeps(device: str, quick: bool) -> dict[str, list[Case]]:
    """Scaling of the full loss (3 pairs) with the tokens per example and the teacher width."""
    if quick:
        return {"T_t": [_case(2, t, t, 640, 576, device) for t in (32, 64)]}
    return {
        "T_t": [_case(8, t, t, 640, 576, device) for t in (64, 128, 256, 512)],
        "D_t": [_case(8, 256, 256, d, 576, device) for d in (256, 640, 2048)],
    }


def _cpu_median_ms(fn, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return statistics.median(times) * 1e3


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="CI-sized smoke run (no speed claims)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--name", default=None)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = min(args.repeats, 3) if args.quick else args.repeats
    info = machine_info(args.device)
    info["loadavg_before"] = os.getloadavg()
    case_list = cases(args.device, args.quick)
    rows = run_cases(case_list, device=args.device, repeats=repeats, warmup=args.warmup)
    if args.device == "cpu":
        # Process CPU time as well: on a shared, loaded machine wall time also measures how long
        # the process waited for a core; CPU time (all threads) measures the work.
        for case, r in zip(case_list, rows, strict=True):
            for impl in case.impls:
                r[f"{impl}_cpu_median_ms"] = _cpu_median_ms(case.make(impl), args.warmup, repeats)
            ours = r["mta_ext_cpu_median_ms"]
            r["cpu_speedup_vs_reference"] = r["reference_cpu_median_ms"] / ours
            r["cpu_speedup_vs_original"] = r["original_cpu_median_ms"] / ours
            print({k: round(v, 3) for k, v in r.items() if "cpu" in k}, flush=True)
    for r in rows:
        r["speedup_vs_original"] = r["original_median_ms"] / r["mta_ext_median_ms"]
        if r.get("original_peak_extra_mib"):
            r["peak_mem_vs_original"] = r["mta_ext_peak_extra_mib"] / r["original_peak_extra_mib"]
    info["loadavg_after"] = os.getloadavg()
    cols = [
        "op",
        "B",
        "T_t",
        "words",
        "phrases",
        "mta_ext_median_ms",
        "reference_median_ms",
        "original_median_ms",
        "speedup_vs_reference",
        "speedup_vs_original",
        "mta_ext_peak_extra_mib",
        "reference_peak_extra_mib",
        "original_peak_extra_mib",
        "peak_mem_vs_original",
        "mta_ext_cpu_median_ms",
        "cpu_speedup_vs_reference",
        "cpu_speedup_vs_original",
    ]
    table = markdown_table(rows, cols)
    print(table)
    payload = {
        "machine": info,
        "quick": args.quick,
        "repeats": repeats,
        "rows": rows,
        "table": table,
        "targets": {
            "speedup_vs_original": 5.0,
            "speedup_vs_reference": 2.0,
            "peak_mem_vs_original": 1 / 3,
        },
    }
    name = args.name or f"loss_{args.device}{'_quick' if args.quick else ''}"
    print("wrote", write_results(name, payload))
    return payload


if __name__ == "__main__":
    main()
