"""structural_loss forward+backward: mta_ext vs the reference, and vs the authors' loss.

    python -m benchmarks.bench_loss [--quick] [--device cpu|cuda] [--repeats 20]
                                    [--paper-repeats 5] [--only paper|cross]

Two settings:

* Cross-tokenizer (mta_ext vs ``mta_ext.reference.structural_loss``, the per-example oracle):
  B examples, teacher T_t / student T_s tokens with ragged right padding, D_t = 640 / D_s = 576
  (Gemma-3-270M / SmolLM2-135M widths), 3 layer pairs (1 word + 2 phrase), salience weighting,
  unit-level Hid (nn.Linear(D_s, D_t) per pair). Units: word units of 1-3 tokens on each side
  covering ~80% of the valid tokens, phrase units of 2-4 consecutive words. The authors' loss
  is not run here: it needs one shared tokenizer.
* The paper's shape, one tokenizer (mta_ext vs ``mta_ext.reference.structural_loss_original``,
  the exact re-creation of the authors' loss, and vs the matmul floor): teacher 1600 wide with
  49 hidden states (GPT-2 XL), student 768 wide with 13 (GPT-2), B=8, T=512 without padding,
  schedule 24/36/48 <-> 6/9/12 (1 word + 2 phrase pairs), ~2,200 word and ~1,230 phrase units
  (words of 1-2 tokens, phrases of 1-3 words), salience weighting, token-level Hid. Only the
  six scheduled hidden states are distinct tensors (the others are never read). The row also
  records the relative difference of the two losses (the maths coincide without padding).
  Matmul floor: the GEMM FLOPs an exact implementation of this formulation must do, at the
  GEMM rate measured alone in the same process: per used layer the salience Gram ``Ĥ Ĥᵀ``
  (symmetric: ``B·T²·D`` FLOPs), and per pair the projector's forward and its two backward
  GEMMs on all ``B·T`` tokens (``3 · 2·B·T·D_s·D_t``). The DSA Grams (a few percent) are left
  out, which only lowers the floor. Every token is projected because the loss weights every
  token inside a unit (~90 % of them here); tokens outside all units could be skipped, which
  on this CPU cost more in gathers than it saved.

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
from typing import Any

import torch
from torch import nn

import mta_ext
from benchmarks.common import (
    Case,
    machine_info,
    markdown_table,
    run_cases,
    time_fn,
    write_results,
)
from mta_ext import reference

IMPLS = ("mta_ext", "reference")
PAPER_IMPLS = ("mta_ext", "original")


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


def _paper_units(B: int, T: int, gen: torch.Generator) -> dict[str, SimpleNamespace]:
    """One tokenizer: identical ranges on both sides. Words of 1-2 tokens with ~30% single-token
    gaps, phrases of 1-3 consecutive words (about 0.55 phrases per word)."""
    words: dict[str, list] = {"cu": [0], "r": []}
    phrases: dict[str, list] = {"cu": [0], "r": []}
    for b in range(B):
        pos, ex = 0, []
        while True:
            ln = 1 if float(torch.rand(1, generator=gen)) < 0.45 else 2
            gap = int(float(torch.rand(1, generator=gen)) < 0.3)
            if pos + gap + ln > T:
                break
            pos += gap
            ex.append((b * T + pos, b * T + pos + ln))
            pos += ln
        words["r"] += ex
        words["cu"].append(len(words["r"]))
        i = 0
        while i < len(ex):
            k = int(torch.randint(1, 3, (1,), generator=gen))
            k += int(float(torch.rand(1, generator=gen)) < 0.3)
            grp = ex[i : i + k]
            phrases["r"].append((grp[0][0], grp[-1][1]))
            i += k
        phrases["cu"].append(len(phrases["r"]))

    def lay(d):
        r = torch.tensor(d["r"], dtype=torch.long).reshape(-1, 2)
        return SimpleNamespace(
            cu_units=torch.tensor(d["cu"], dtype=torch.long), teacher_ranges=r, student_ranges=r
        )

    return {"word": lay(words), "phrase": lay(phrases)}


def _paper_case(
    B: int, T: int, Dt: int, Ds: int, Lt: int, Ls: int, device: str
) -> tuple[Case, dict]:
    """The paper's shape (see the module docstring); returns the case and the floor's inputs."""
    gen = torch.Generator().manual_seed(0)
    units = _paper_units(B, T, gen)
    for lay in units.values():
        for k in ("cu_units", "teacher_ranges", "student_ranges"):
            setattr(lay, k, getattr(lay, k).to(device))
    mask = torch.ones(B, T, dtype=torch.long, device=device)
    alignment = SimpleNamespace(
        units=units,
        teacher={"attention_mask": mask},
        student={"attention_mask": mask},
        shared_tokenizer=True,
    )
    schedule = mta_ext.LayerSchedule.uniform(Lt, Ls, 3, 1)  # 24/36/48 <-> 6/9/12 for 48/12
    used_t = {p.teacher_layer for p in schedule}
    used_s = {p.student_layer for p in schedule}
    filler_t = torch.randn(B, T, Dt, generator=gen).to(device)
    filler_s = torch.randn(B, T, Ds, generator=gen).to(device)
    t_hs = tuple(
        torch.randn(B, T, Dt, generator=gen).to(device) if i in used_t else filler_t
        for i in range(Lt + 1)
    )
    s_hs0 = tuple(
        torch.randn(B, T, Ds, generator=gen).to(device) if i in used_s else filler_s
        for i in range(Ls + 1)
    )
    torch.manual_seed(0)
    projectors = nn.ModuleList(nn.Linear(Ds, Dt) for _ in range(3)).to(device)

    def fns(impl):
        s_hs = tuple(h.clone().requires_grad_() if i in used_s else h for i, h in enumerate(s_hs0))
        if impl == "mta_ext":

            def loss():
                return mta_ext.structural_loss(
                    s_hs, t_hs, alignment, schedule, projectors=projectors, hid="token"
                )
        else:

            def loss():
                return reference.structural_loss_original(
                    s_hs, t_hs, alignment, schedule, projectors=projectors
                )

        def run():
            for h in s_hs:
                h.grad = None
            projectors.zero_grad(set_to_none=True)
            loss().backward()

        return run, loss

    def make(impl):
        return fns(impl)[0]

    with torch.no_grad():
        ours, orig = fns("mta_ext")[1](), fns("original")[1]()
    covered = 0
    for lay in units.values():
        cov = torch.zeros(B * T + 1, dtype=torch.int32, device=device)
        r = lay.teacher_ranges
        one = torch.ones(len(r), dtype=torch.int32, device=device)
        cov.index_add_(0, r[:, 0], one).index_add_(0, r[:, 1], -one)
        covered = max(covered, int((cov.cumsum(0)[:-1] > 0).sum()))
    params = {
        "B": B,
        "T_t": T,
        "D_t": Dt,
        "D_s": Ds,
        "hidden_states": f"{Lt + 1}/{Ls + 1}",
        "schedule": repr(schedule),
        "words": int(units["word"].cu_units[-1]),
        "phrases": int(units["phrase"].cu_units[-1]),
        "word_token_coverage": round(covered / (B * T), 3),
        "rel_diff_vs_original": abs(float(ours) - float(orig)) / abs(float(orig)),
    }
    floor_inputs = {
        "hn": [h.detach() for i, h in enumerate(t_hs) if i in used_t]
        + [h.detach() for i, h in enumerate(s_hs0) if i in used_s],
        "x": s_hs0[next(iter(used_s))].reshape(B * T, Ds),
        "weights": [p.weight.detach() for p in projectors],
        "bias": projectors[0].bias.detach(),
        "g": torch.randn(B * T, Dt, generator=gen).to(device),
    }
    return Case("structural_loss fwd+bwd (paper shape)", params, make, impls=PAPER_IMPLS), (
        floor_inputs
    )


def _matmul_floor(inp: dict) -> tuple[Any, float, float]:
    """The GEMMs of the formulation (module docstring): ``(closure, timed FLOPs, floor FLOPs)``.

    The closure runs full GEMMs; the floor counts the salience Gram once per pair ``s < t``
    (it is symmetric: ``B·T²·D`` FLOPs, half of the GEMM's), so ``floor time = timed time ·
    floor FLOPs / timed FLOPs`` is the floor FLOPs at the GEMM rate measured in the same run.
    """
    hn, x, ws, bias, g = inp["hn"], inp["x"], inp["weights"], inp["bias"], inp["g"]
    gram = sum(2 * h.shape[0] * h.shape[1] ** 2 * h.shape[2] for h in hn)
    proj = 3 * sum(2 * x.shape[0] * w.shape[0] * w.shape[1] for w in ws)

    def run():
        for h in hn:
            torch.bmm(h, h.transpose(1, 2))
        for w in ws:
            torch.addmm(bias, x, w.t())  # forward projection
            g @ w  # d loss / d x
            g.t() @ x  # d loss / d W

    return run, float(gram + proj), float(gram / 2 + proj)


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
    p.add_argument("--paper-repeats", type=int, default=5, help="repeats at the paper's shape")
    p.add_argument("--only", choices=("paper", "cross"), default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = min(args.repeats, 3) if args.quick else args.repeats
    info = machine_info(args.device)
    info["loadavg_before"] = os.getloadavg()
    case_list = [] if args.only == "paper" else cases(args.device, args.quick)
    rows = run_cases(case_list, device=args.device, repeats=repeats, warmup=args.warmup)
    paper_rows: list[dict] = []
    if args.only != "cross":
        shape = (1, 64, 160, 96, 8, 4) if args.quick else (8, 512, 1600, 768, 48, 12)
        case, floor_in = _paper_case(*shape, args.device)
        prep = min(args.paper_repeats, 2) if args.quick else args.paper_repeats
        paper_rows = run_cases([case], device=args.device, repeats=prep, warmup=1)
        floor_fn, timed_flops, floor_flops = _matmul_floor(floor_in)
        t = time_fn(floor_fn, device=args.device, warmup=1, repeats=max(prep, 3))
        r = paper_rows[0]
        r["matmul_gflop"] = floor_flops / 1e9
        r["floor_ms"] = t["median_s"] * 1e3 * floor_flops / timed_flops
        r["gemm_gflop_per_s"] = timed_flops / t["median_s"] / 1e9
        r["x_of_floor"] = r["mta_ext_median_ms"] / r["floor_ms"]
        r["original_x_of_floor"] = r["original_median_ms"] / r["floor_ms"]
        case_list.append(case)
        rows += paper_rows
        if args.device == "cpu":
            cpu_ms = _cpu_median_ms(floor_fn, 1, max(prep, 3))
            r["floor_cpu_median_ms"] = cpu_ms * floor_flops / timed_flops
    if args.device == "cpu":
        # Process CPU time as well: on a shared, loaded machine wall time also measures how long
        # the process waited for a core; CPU time (all threads) measures the work.
        for case, r in zip(case_list, rows, strict=True):
            rep = (
                repeats
                if r not in paper_rows
                else (min(args.paper_repeats, 2) if args.quick else args.paper_repeats)
            )
            for impl in case.impls:
                r[f"{impl}_cpu_median_ms"] = _cpu_median_ms(case.make(impl), 1, rep)
            ours = r["mta_ext_cpu_median_ms"]
            for impl in case.impls[1:]:
                r[f"cpu_speedup_vs_{impl}"] = r[f"{impl}_cpu_median_ms"] / ours
            if "floor_cpu_median_ms" in r:
                r["cpu_x_of_floor"] = ours / r["floor_cpu_median_ms"]
            print({k: round(v, 3) for k, v in r.items() if "cpu" in k}, flush=True)
    for r in rows:
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
        "speedup_vs_reference",
        "mta_ext_peak_extra_mib",
        "reference_peak_extra_mib",
        "mta_ext_cpu_median_ms",
        "cpu_speedup_vs_reference",
    ]
    paper_cols = [
        "op",
        "B",
        "T_t",
        "D_t",
        "D_s",
        "words",
        "phrases",
        "rel_diff_vs_original",
        "mta_ext_median_ms",
        "original_median_ms",
        "speedup_vs_original",
        "floor_ms",
        "gemm_gflop_per_s",
        "x_of_floor",
        "mta_ext_cpu_median_ms",
        "original_cpu_median_ms",
        "cpu_speedup_vs_original",
        "floor_cpu_median_ms",
        "cpu_x_of_floor",
        "mta_ext_peak_extra_mib",
        "original_peak_extra_mib",
        "peak_mem_vs_original",
    ]
    cross_rows = [r for r in rows if r not in paper_rows]
    table = markdown_table(cross_rows, cols) if cross_rows else ""
    if paper_rows:
        table += ("\n\n" if table else "") + markdown_table(paper_rows, paper_cols)
    print(table)
    print("load average before / after:", info["loadavg_before"], info["loadavg_after"])
    payload = {
        "machine": info,
        "quick": args.quick,
        "repeats": repeats,
        "rows": rows,
        "table": table,
        "targets": {
            "speedup_vs_reference": 2.0,
            "paper_speedup_vs_original": 2.5,
            "paper_x_of_floor": 1.5,
        },
    }
    name = args.name or f"loss_{args.device}{'_quick' if args.quick else ''}"
    print("wrote", write_results(name, payload))
    return payload


if __name__ == "__main__":
    main()
