"""structural_loss forward+backward: mta_ext vs the reference, and vs the authors' loss.

    python -m benchmarks.training.bench_loss [--quick] [--device cpu|cuda] [--repeats 20]
                                    [--paper-repeats 7] [--only paper|cross] [--paper]

Two settings:

* Cross-tokenizer (mta_ext vs ``mta_ext.reference.structural_loss``, the per-example oracle):
  B examples, teacher T_t / student T_s tokens with ragged right padding, D_t = 640 / D_s = 576
  (Gemma-3-270M / SmolLM2-135M widths), 3 layer pairs (1 word + 2 phrase), salience weighting,
  unit-level Hid (nn.Linear(D_s, D_t) per pair). Units: word units of 1-3 tokens on each side
  covering ~80% of the valid tokens, phrase units of 2-4 consecutive words. The authors' loss
  is not run here: it needs one shared tokenizer.
* The paper's shape, one tokenizer, in one interleaved run (``--paper`` = ``--only paper``):
  teacher 1600 wide with 49 hidden states (GPT-2 XL), student 768 wide with 13 (GPT-2), B=8,
  T=512 without padding, schedule 24/36/48 <-> 6/9/12 (1 word + 2 phrase pairs), ~2,200 word
  and ~1,230 phrase units (words of 1-2 tokens, phrases of 1-3 words), salience weighting,
  token-level Hid. Only the six scheduled hidden states are distinct tensors. Timed, each
  round in turn (medians of ``--paper-repeats`` rounds after one warm-up round):
  the authors' computation (``mta_ext.reference.structural_loss_original``: their index
  gather / ``scatter_add_`` / batch-wide masked Gram strategy; one extra profiled call prints
  the time per phase and the ops that dominate it); ours (``structural_loss`` on
  ``UnitLayout``s carrying their host metadata ``.host``, the path users run); ours on the same
  layouts without ``.host`` (labelled "raw-op fallback": the ops size their work from device
  tensors, one host sync each on a GPU, and every row is projected); and the matmul floor of
  each formulation (its GEMMs alone, at the rate measured in the same run, see ``_floors``).
  The row records the relative difference of the two losses (the maths coincide without
  padding) and the load average around the timed rounds.
  On a GPU: ``python -m benchmarks.training.bench_loss --device cuda --paper``
  (CUDA-synchronised wall times; no process CPU time).

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
from contextlib import nullcontext
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

import mta_ext
from benchmarks.common import (
    Case,
    machine_info,
    markdown_table,
    peak_extra_bytes,
    run_cases,
    sync,
    write_results,
)
from mta_ext import reference
from mta_ext.alignment import UnitLayout

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
        # a UnitLayout validated on the CPU: it carries the host metadata (.host) an Aligner's
        # layouts carry, so the timed path is the one users run
        t = torch.tensor(d["t"], dtype=torch.long).reshape(-1, 2)
        return UnitLayout(
            torch.tensor(d["cu"], dtype=torch.long),
            torch.zeros_like(t),
            t,
            torch.tensor(d["s"], dtype=torch.long).reshape(-1, 2),
        )

    return {"word": lay(words), "phrase": lay(phrases)}


def _case(B: int, Tt: int, Ts: int, Dt: int, Ds: int, device: str, dtype=torch.float32) -> Case:
    gen = torch.Generator().manual_seed(0)
    len_t = torch.randint(int(0.8 * Tt), Tt + 1, (B,), generator=gen).tolist()
    len_s = torch.randint(int(0.8 * Ts), Ts + 1, (B,), generator=gen).tolist()
    mask_t = (torch.arange(Tt)[None] < torch.tensor(len_t)[:, None]).long()
    mask_s = (torch.arange(Ts)[None] < torch.tensor(len_s)[:, None]).long()
    units = {g: lay.to(device) for g, lay in _units(B, Tt, Ts, len_t, len_s, gen).items()}
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


def _paper_units(
    B: int, T: int, gen: torch.Generator, device: str
) -> tuple[dict[str, UnitLayout], dict[str, SimpleNamespace]]:
    """One tokenizer: identical ranges on both sides. Words of 1-2 tokens with ~30% single-token
    gaps, phrases of 1-3 consecutive words (about 0.55 phrases per word).

    Returns the layouts twice: as ``UnitLayout`` (validated on the CPU, carrying the host
    metadata ``.host`` an ``Aligner`` gives them: the path users run) and as plain namespaces of
    the same tensors without it (the raw-op fallback: the ops size their work from device
    tensors, and the token-level Hid projects every row)."""
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

    hosted, plain = {}, {}
    for g, d in (("word", words), ("phrase", phrases)):
        r = torch.tensor(d["r"], dtype=torch.long).reshape(-1, 2)
        cu = torch.tensor(d["cu"], dtype=torch.long)
        lay = UnitLayout(cu, torch.zeros_like(r), r, r.clone()).to(device)
        assert lay.host is not None
        hosted[g] = lay
        plain[g] = SimpleNamespace(
            cu_units=lay.cu_units,
            teacher_ranges=lay.teacher_ranges,
            student_ranges=lay.student_ranges,
        )
    return hosted, plain


def _paper_inputs(B: int, T: int, Dt: int, Ds: int, Lt: int, Ls: int, device: str) -> dict:
    """The paper's shape (see the module docstring): hidden states, projectors, alignments."""
    gen = torch.Generator().manual_seed(0)
    hosted, plain = _paper_units(B, T, gen, device)
    mask = torch.ones(B, T, dtype=torch.long, device=device)

    def alignment(units):
        return SimpleNamespace(
            units=units,
            teacher={"attention_mask": mask},
            student={"attention_mask": mask},
            shared_tokenizer=True,
        )

    schedule = mta_ext.LayerSchedule.uniform(Lt, Ls, 3, 1)  # 24/36/48 <-> 6/9/12 for 48/12
    used_t = sorted({p.teacher_layer for p in schedule})
    used_s = sorted({p.student_layer for p in schedule})
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
    return {
        "B": B, "T": T, "Dt": Dt, "Ds": Ds, "Lt": Lt, "Ls": Ls,
        "schedule": schedule, "used_t": used_t, "used_s": used_s,
        "t_hs": t_hs, "s_hs0": s_hs0, "projectors": projectors,
        "alignment": alignment(hosted), "alignment_fallback": alignment(plain),
        "g": torch.randn(B * T, Dt, generator=gen).to(device),
    }  # fmt: skip


def _paper_fns(inp: dict, impl: str, profile: bool = False):
    """``(run, loss)`` closures of one implementation: ``run`` is one fwd+bwd."""
    used_s = inp["used_s"]
    s_hs = tuple(
        h.clone().requires_grad_() if i in used_s else h for i, h in enumerate(inp["s_hs0"])
    )
    t_hs, sched, projs = inp["t_hs"], inp["schedule"], inp["projectors"]
    if impl == "original":

        def loss():
            return reference.structural_loss_original(
                s_hs, t_hs, inp["alignment"], sched, projectors=projs, profile=profile
            )
    else:
        al = inp["alignment_fallback" if impl == "mta_ext_fallback" else "alignment"]

        def loss():
            return mta_ext.structural_loss(s_hs, t_hs, al, sched, projectors=projs, hid="token")

    def run():
        for h in s_hs:
            h.grad = None
        projs.zero_grad(set_to_none=True)
        out = loss()
        with torch.profiler.record_function("orig/backward") if profile else nullcontext():
            out.backward()

    return run, loss


def _floors(inp: dict) -> dict[str, tuple[Any, float, float]]:
    """The GEMMs of each formulation: ``{name: (closure, timed FLOPs, floor FLOPs)}``.

    ``ours``: per used layer the salience Gram ``Ĥ Ĥᵀ`` (symmetric: the floor counts
    ``B·T²·D`` FLOPs, half of the GEMM the closure runs), per pair the projector's forward and
    its two backward GEMMs on the rows it projects (every row, or only those inside some unit
    when the host metadata counts them and they are not all of them). The per-example DSA
    Grams (a few percent) are left out, which only lowers the floor.
    ``original``: the GEMMs the authors' computation runs: a full ``[B, T, T]`` salience matmul
    per used layer, the projector's three GEMMs on the gathered (token, unit) incidences
    (duplicates included), and per pair the two batch-wide ``n × n`` unit Grams plus the two
    backward GEMMs of the student's.
    """
    B, T, Dt, Ds = inp["B"], inp["T"], inp["Dt"], inp["Ds"]
    t_hs, s_hs = inp["t_hs"], inp["s_hs0"]
    hn = [t_hs[i].detach() for i in inp["used_t"]] + [s_hs[i].detach() for i in inp["used_s"]]
    gram = sum(2 * B * T * T * h.shape[2] for h in hn)
    projs, g = inp["projectors"], inp["g"]
    x = s_hs[inp["used_s"][0]].reshape(B * T, Ds)
    hosts = {k: lay.host for k, lay in inp["alignment"].units.items()}
    pairs = [
        (p, projs[i].weight.detach(), projs[i].bias.detach()) for i, p in enumerate(inp["schedule"])
    ]
    # the rows structural_loss projects: those inside some unit, or all of them when the
    # units cover every row of the axis
    rows_ours = []
    for p, _, _ in pairs:
        c = hosts[p.granularity].teacher_covered_rows
        rows_ours.append(c if 0 <= c < B * T else B * T)
    rows_orig = [hosts[p.granularity].teacher_incidences for p, _, _ in pairs]
    n_units = [int(inp["alignment"].units[p.granularity].cu_units[-1]) for p, _, _ in pairs]
    u_s = [torch.randn(n, Ds, device=x.device) for n in n_units]
    u_t = [torch.randn(n, Dt, device=x.device) for n in n_units]
    u_g = [torch.randn(n, n, device=x.device) for n in n_units]

    def projector(rows_list):
        def go():
            for (_, w, b), rows in zip(pairs, rows_list, strict=True):
                xr, gr = x[:rows], g[:rows]
                torch.addmm(b, xr, w.t())  # forward projection
                gr @ w  # d loss / d x
                gr.t() @ xr  # d loss / d W

        return go, float(sum(3 * 2 * r * Ds * Dt for r in rows_list))

    proj_ours, f_ours = projector(rows_ours)
    proj_orig, f_orig = projector(rows_orig)

    def salience():
        for h in hn:
            torch.bmm(h, h.transpose(1, 2))

    def ours():
        salience()
        proj_ours()

    def original():
        salience()
        proj_orig()
        for us, ut, gu in zip(u_s, u_t, u_g, strict=True):
            us @ us.t()  # student unit Gram
            ut @ ut.t()  # teacher unit Gram
            gu @ us  # backward: d/d u_s (twice: both factors)
            gu.t() @ us

    dsa = float(sum(2 * n * n * (Ds + Dt) + 2 * 2 * n * n * Ds for n in n_units))
    return {
        "ours": (ours, float(gram + f_ours), float(gram / 2 + f_ours)),
        "original": (original, float(gram + f_orig + dsa), float(gram + f_orig + dsa)),
    }


def _profile_lines(inp: dict, device: str) -> list[str]:
    """One fwd+bwd of the authors' computation under the profiler: per phase (its
    ``record_function`` label, docs of ``structural_loss_original``) the time and the ops that
    dominate it, showing the time is spent the way their code spends it."""
    from torch.profiler import ProfilerActivity, profile

    run, _ = _paper_fns(inp, "original", profile=True)
    run()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=acts) as prof:
        run()
        sync(device)
    phases: dict[str, dict] = {}

    def walk(ev, acc):
        for c in ev.cpu_children:
            acc[c.name] = acc.get(c.name, 0.0) + c.self_cpu_time_total
            walk(c, acc)

    for ev in prof.events():
        if not ev.name.startswith("orig/"):
            continue
        ph = phases.setdefault(ev.name, {"ms": 0.0, "n": 0, "ops": {}})
        ph["ms"] += ev.cpu_time_total / 1e3
        ph["n"] += 1
        walk(ev, ph["ops"])
    total = sum(v["ms"] for v in phases.values())
    lines = []
    for name, ph in sorted(phases.items(), key=lambda kv: -kv[1]["ms"]):
        ops = [kv for kv in ph["ops"].items() if kv[0].startswith(("aten::", "mta_ext::"))]
        ops = sorted(ops, key=lambda kv: -kv[1])[:4]
        top = ", ".join(f"{k.replace('aten::', '')} {v / 1e3:.0f}" for k, v in ops if v > 0)
        lines.append(
            f"  {name:<16} {ph['ms']:8.1f} ms ({100 * ph['ms'] / total:4.1f} %, {ph['n']}x)  "
            f"top ops (self ms): {top}"
        )
    return lines


def _interleaved(fns: dict[str, Any], device: str, repeats: int) -> dict[str, dict]:
    """Wall (and on CPU process CPU) time of each closure, the closures run in turn each
    round (interleaved, so a load change hits all alike); one warm-up round."""
    for fn in fns.values():
        fn()
    sync(device)
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            sync(device)
            wall[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
    return {
        k: {
            "median_ms": statistics.median(wall[k]) * 1e3,
            "min_ms": min(wall[k]) * 1e3,
            "max_ms": max(wall[k]) * 1e3,
            "cpu_median_ms": statistics.median(cpu[k]) * 1e3,
            "wall_ms": [x * 1e3 for x in wall[k]],
        }
        for k in fns
    }


def paper_row(shape: tuple, device: str, repeats: int) -> tuple[dict, list[str]]:
    """The paper-shape comparison in one run: ``(row, profile lines)``."""
    inp = _paper_inputs(*shape, device)
    B, T, Dt, Ds, Lt, Ls = shape
    lay = inp["alignment"].units
    with torch.no_grad():
        ours = _paper_fns(inp, "mta_ext")[1]()
        orig = _paper_fns(inp, "original")[1]()
    row: dict[str, Any] = {
        "op": "structural_loss fwd+bwd (paper shape)",
        "B": B,
        "T_t": T,
        "D_t": Dt,
        "D_s": Ds,
        "hidden_states": f"{Lt + 1}/{Ls + 1}",
        "schedule": repr(inp["schedule"]),
        "words": int(lay["word"].cu_units[-1]),
        "phrases": int(lay["phrase"].cu_units[-1]),
        "covered_rows": {g: lay[g].host.teacher_covered_rows for g in lay},
        "incidences": {g: lay[g].host.teacher_incidences for g in lay},
        "rel_diff_vs_original": abs(float(ours) - float(orig)) / abs(float(orig)),
        "device": device,
    }
    prof = _profile_lines(inp, device)
    floors = _floors(inp)
    impls = ("original", "mta_ext", "mta_ext_fallback")
    fns: dict[str, Any] = {k: _paper_fns(inp, k)[0] for k in impls}
    fns["floor_ours"] = floors["ours"][0]
    fns["floor_original"] = floors["original"][0]
    row["load_before"] = os.getloadavg()
    t = _interleaved(fns, device, repeats)
    row["load_after"] = os.getloadavg()
    row["runs"] = repeats
    for k in impls:
        for m in ("median_ms", "min_ms", "max_ms") + (
            ("cpu_median_ms",) if device == "cpu" else ()
        ):
            row[f"{k}_{m}"] = t[k][m]
    for key, name in (("ours", "floor"), ("original", "original_floor")):
        _, timed, floor = floors[key]
        scale = floor / timed
        row[f"{name}_ms"] = t[f"floor_{key}"]["median_ms"] * scale
        row[f"{name}_gflop"] = floor / 1e9
        if device == "cpu":
            row[f"{name}_cpu_ms"] = t[f"floor_{key}"]["cpu_median_ms"] * scale
    row["gemm_gflop_per_s"] = floors["ours"][1] / t["floor_ours"]["median_ms"] / 1e6
    ours_ms, orig_ms = row["mta_ext_median_ms"], row["original_median_ms"]
    row["speedup_vs_original"] = orig_ms / ours_ms
    # Each round times both back to back: the spread of the per-round ratios is the noise of
    # the headline ratio on this machine.
    pairs = zip(t["original"]["wall_ms"], t["mta_ext"]["wall_ms"], strict=True)
    per_round = [o / m for o, m in pairs]
    row["speedup_per_round_min"] = min(per_round)
    row["speedup_per_round_max"] = max(per_round)
    row["fallback_speedup_vs_original"] = orig_ms / row["mta_ext_fallback_median_ms"]
    row["x_of_floor"] = ours_ms / row["floor_ms"]
    row["original_x_of_floor"] = orig_ms / row["original_floor_ms"]
    row["floor_ratio"] = row["original_floor_ms"] / row["floor_ms"]
    if device == "cpu":
        row["cpu_speedup_vs_original"] = (
            row["original_cpu_median_ms"] / row["mta_ext_cpu_median_ms"]
        )
        row["cpu_x_of_floor"] = row["mta_ext_cpu_median_ms"] / row["floor_cpu_ms"]
    for k in impls:
        run = _paper_fns(inp, k)[0]
        run()
        row[f"{k}_peak_extra_mib"] = (peak_extra_bytes(run, device=device) or 0) / 2**20
    row["peak_mem_vs_original"] = row["mta_ext_peak_extra_mib"] / max(
        row["original_peak_extra_mib"], 1e-9
    )
    return row, prof


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
    p.add_argument("--paper-repeats", type=int, default=7, help="interleaved rounds, paper shape")
    p.add_argument("--only", choices=("paper", "cross"), default=None)
    p.add_argument("--paper", action="store_true", help="same as --only paper")
    args = p.parse_args(argv)
    if args.paper:
        args.only = "paper"
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = min(args.repeats, 3) if args.quick else args.repeats
    info = machine_info(args.device)
    info["loadavg_before"] = os.getloadavg()
    case_list = [] if args.only == "paper" else cases(args.device, args.quick)
    rows = run_cases(case_list, device=args.device, repeats=repeats, warmup=args.warmup)
    if args.device == "cpu":
        # Process CPU time as well: on a shared, loaded machine wall time also measures how long
        # the process waited for a core; CPU time (all threads) measures the work.
        for case, r in zip(case_list, rows, strict=True):
            for impl in case.impls:
                r[f"{impl}_cpu_median_ms"] = _cpu_median_ms(case.make(impl), 1, repeats)
            ours = r["mta_ext_cpu_median_ms"]
            for impl in case.impls[1:]:
                r[f"cpu_speedup_vs_{impl}"] = r[f"{impl}_cpu_median_ms"] / ours
            print({k: round(v, 3) for k, v in r.items() if "cpu" in k}, flush=True)
    paper_rows: list[dict] = []
    profile: list[str] = []
    if args.only != "cross":
        shape = (1, 64, 160, 96, 8, 4) if args.quick else (8, 512, 1600, 768, 48, 12)
        prep = min(args.paper_repeats, 2) if args.quick else args.paper_repeats
        row, profile = paper_row(shape, args.device, prep)
        paper_rows.append(row)
        print("authors' computation, one fwd+bwd under the profiler (phases of "
              "reference.structural_loss_original):")  # fmt: skip
        print("\n".join(profile))
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
    table = markdown_table(rows, cols) if rows else ""
    if paper_rows:
        r = paper_rows[0]
        cpu = args.device == "cpu"

        def ms(k):
            return f"{r[k]:.0f}"

        def cpu_ms(k):
            return f"{r[k]:.0f}" if cpu else "—"

        lines = [
            f"Paper shape: B={r['B']}, T={r['T_t']}, D_t={r['D_t']}, D_s={r['D_s']}, "
            f"{r['words']} word + {r['phrases']} phrase units, fwd+bwd, medians of "
            f"{r['runs']} interleaved rounds; load average {r['load_before'][0]:.2f} before, "
            f"{r['load_after'][0]:.2f} after; losses agree to "
            f"{r['rel_diff_vs_original']:.1e} relative.",
            "",
            "| what | wall ms (median) | min–max | process CPU ms | x of own floor | "
            "peak extra MiB |",
            "|---|---|---|---|---|---|",
            f"| authors' computation (`reference.structural_loss_original`) | "
            f"{ms('original_median_ms')} | {ms('original_min_ms')}–{ms('original_max_ms')} | "
            f"{cpu_ms('original_cpu_median_ms') if cpu else '—'} | "
            f"{r['original_x_of_floor']:.2f} | {r['original_peak_extra_mib']:.0f} |",
            f"| ours (`structural_loss`, layouts with `.host`) | {ms('mta_ext_median_ms')} | "
            f"{ms('mta_ext_min_ms')}–{ms('mta_ext_max_ms')} | "
            f"{cpu_ms('mta_ext_cpu_median_ms') if cpu else '—'} | {r['x_of_floor']:.2f} | "
            f"{r['mta_ext_peak_extra_mib']:.0f} |",
            f"| ours, raw-op fallback (layouts without `.host`) | "
            f"{ms('mta_ext_fallback_median_ms')} | {ms('mta_ext_fallback_min_ms')}–"
            f"{ms('mta_ext_fallback_max_ms')} | "
            f"{cpu_ms('mta_ext_fallback_cpu_median_ms') if cpu else '—'} | — | "
            f"{r['mta_ext_fallback_peak_extra_mib']:.0f} |",
            f"| matmul floor of the authors' computation ({r['original_floor_gflop']:.1f} "
            f"GFLOP) | {ms('original_floor_ms')} | | "
            f"{cpu_ms('original_floor_cpu_ms') if cpu else '—'} | 1 | |",
            f"| matmul floor of ours ({r['floor_gflop']:.1f} GFLOP) | {ms('floor_ms')} | | "
            f"{cpu_ms('floor_cpu_ms') if cpu else '—'} | 1 | |",
            "",
            f"Ours vs the authors' computation: **{r['speedup_vs_original']:.2f}x** wall "
            f"(per round {r['speedup_per_round_min']:.2f}–{r['speedup_per_round_max']:.2f}x)"
            + (f", {r['cpu_speedup_vs_original']:.2f}x process CPU time" if cpu else "")
            + f" (fallback {r['fallback_speedup_vs_original']:.2f}x); floors "
            f"{r['floor_ratio']:.2f}x apart; GEMM rate {r['gemm_gflop_per_s']:.0f} GFLOP/s "
            "(measured in the same run).",
            "",
        ]
        table += ("\n\n" if table else "") + "\n".join(lines)
    print(table)
    print("load average before / after:", info["loadavg_before"], info["loadavg_after"])
    payload = {
        "machine": info,
        "quick": args.quick,
        "repeats": repeats,
        "rows": rows + paper_rows,
        "paper_profile": profile,
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
