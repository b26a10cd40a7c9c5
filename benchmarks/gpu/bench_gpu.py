"""The GPU benchmark: the CPU benchmark's cases on the GPU, plus the GPU ceilings and targets.

    python -m benchmarks.gpu.bench_gpu [--device cuda] [--quick] [--json PATH] [--no-compile]
    python -m benchmarks.gpu.bench_gpu --dry-run      # tiny sizes on the CPU: checks the script

One harness with the CPU benchmarks (benchmarks/common.py: ``time_fn`` with CUDA events,
``run_cases``, ``copy_bandwidth``, ``matmul_flops``; benchmarks/ops: the cases, ``make_units``,
``ragged_examples`` and ``row_cosine_case``), in one process on one card:

1. Ceilings, measured in the same run: the copy bandwidth (a 1 GiB device-to-device copy, bytes
   read + written) and the bf16 matmul rate (8192^3 ``torch.mm``).
2. The ops table: exactly ``python -m benchmarks.ops.bench_ops --device cuda`` (the cases of
   benchmarks/ops, each op vs its reference, with the labelled raw-op fallback rows), so the CPU
   and GPU tables compare row for row.
3. The GPU targets, each a ratio measured in this run:
   * segment_pool fwd+bwd (4k-64k tokens, D 576-4096, bf16/fp32): the bytes that must move
     (hidden read, out written, grad_out read, grad_hidden written) over the time, >= 70 % of the
     copy bandwidth; >= 2x a ``torch.segment_reduce`` formulation of the same weighted mean
     (the units are disjoint word runs, so segment_reduce applies: gaps are their own segments);
   * relational_loss fwd+bwd (B = 8, N_b 64-1024, bf16): >= 3x a padded-``bmm`` formulation
     under ``torch.compile``; the fraction of the bf16 matmul rate, counting the nominal dense
     FLOPs 6 * sum_b N_b^2 * (Ds + Dt) (forward Grams + two backward products per side, as the
     dense version does them; the kernel visits only the upper triangle of each Gram);
   * token_salience (T 512-4096, bf16): >= 3x the reference; fraction of the matmul rate
     (2 * 2 * B * T^2 * D: two passes over the T x T dot products);
   * row_cosine fwd+bwd (4k-32k teacher rows, 80 % of them compared, D 1600-4096, bf16/fp32):
     the bytes that must move (p and the h rows read forward and again backward, grad_p
     written) over the time, >= 60 % of the copy bandwidth; >= 3x the reference.
   structural_loss at the paper's shape is
   ``python -m benchmarks.training.bench_loss --device cuda`` (the same one-tokenizer comparison
   as on the CPU); gpu_check.sh runs it next to this.

The timed path is the one users run: every mta_ext call passes its host metadata
(``num_incidences`` / ``plan_sizes``, computed once per input set on the CPU before the tensors
move), and every case makes one more call under ``torch.cuda.set_sync_debug_mode("error")``:
the ``host_sync`` column proves that the timed path never waits for the host ("none"). The
labelled ``[raw-op fallback]`` rows of the ops table time the call without host metadata (one
sync per call). Writes JSON (``--json``) and prints the tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

import mta_ext
from benchmarks.common import (
    Case,
    copy_bandwidth,
    machine_info,
    markdown_table,
    matmul_flops,
    run_cases,
)
from benchmarks.ops.bench_ops import run_ops
from benchmarks.ops.relational_loss import ragged_examples
from benchmarks.ops.row_cosine import row_cosine_case
from benchmarks.ops.segment_pool import make_units, num_incidences
from mta_ext import reference
from mta_ext._layout import relational_plan_sizes

# ------------------------------------------------------------------------------ targets


def segment_pool_target(tokens: int, d: int, dtype: torch.dtype, device: str) -> Case:
    """fwd+bwd of N = 0.4 * tokens word-like units: mta_ext, the reference, segment_reduce."""
    n = int(0.4 * tokens)
    gen = torch.Generator().manual_seed(0)
    ranges_cpu = make_units(tokens, n, gen)
    meta = {"num_incidences": num_incidences(ranges_cpu)}
    # segment_reduce: the disjoint sorted units and the gaps around them as consecutive segments
    # (host ints, computed once like the host metadata); the unit segments are the odd ones.
    starts, ends = ranges_cpu[:, 0], ranges_cpu[:, 1]
    prev_end = torch.cat([torch.zeros(1, dtype=torch.long), ends[:-1]])
    lengths_cpu = torch.stack([starts - prev_end, ends - starts], 1).reshape(-1)
    lengths_cpu = torch.cat([lengths_cpu, torch.tensor([tokens - int(ends[-1])])])
    assert int(lengths_cpu.min()) >= 0 and int(lengths_cpu.sum()) == tokens
    hidden = torch.randn(tokens, d, generator=gen).to(dtype).to(device)
    weights = torch.rand(tokens, generator=gen).to(device)
    grad = torch.randn(n, d, generator=gen).to(dtype).to(device)
    ranges = ranges_cpu.to(device)
    lengths = lengths_cpu.to(device)
    unit_seg = torch.arange(1, 2 * n, 2, device=device)

    def seg_reduce(h: torch.Tensor) -> torch.Tensor:
        wh = h * weights[:, None].to(h.dtype)
        num = torch.segment_reduce(wh, "sum", lengths=lengths, axis=0, unsafe=True)
        den = torch.segment_reduce(weights, "sum", lengths=lengths, axis=0, unsafe=True)
        return num[unit_seg] / den[unit_seg].clamp_min(1e-5)[:, None].to(h.dtype)

    def make(impl: str) -> Callable[[], Any]:
        h = hidden.clone().requires_grad_()
        fn: Callable[[torch.Tensor], torch.Tensor] = {
            "mta_ext": lambda x: mta_ext.segment_pool(x, ranges, weights, **meta),
            "reference": lambda x: reference.segment_pool(x, ranges, weights),
            "segment_reduce": seg_reduce,
        }[impl]

        def run() -> None:
            h.grad = None
            fn(h).backward(grad)

        return run

    esize = hidden.element_size()
    params = {"tokens": tokens, "D": d, "N": n, "dtype": str(dtype).replace("torch.", "")}
    return Case(
        "segment_pool fwd+bwd",
        params,
        make,
        impls=("mta_ext", "segment_reduce", "reference"),
        floor_bytes=(2 * tokens * d + 2 * n * d) * esize,
    )


def _padded_bmm_loss(
    us: torch.Tensor,
    ut: torch.Tensor,
    w: torch.Tensor,
    idx: torch.Tensor,
    valid: torch.Tensor,
) -> torch.Tensor:
    """DSA as a dense PyTorch user writes it: units gathered into ``[B, N_max, D]``, cosine
    Grams by ``bmm`` in the input dtype, masked weighted MSE in fp32 (the diagonal excluded)."""

    def gram(u: torch.Tensor) -> torch.Tensor:
        p = F.normalize(u[idx].float(), dim=-1, eps=1e-12).to(u.dtype) * valid[..., None]
        return torch.bmm(p, p.transpose(1, 2)).float()

    wp = w[idx].float() * valid
    ww = wp[:, :, None] * wp[:, None, :]
    ww = ww * (1 - torch.eye(idx.shape[1], device=idx.device))
    return (ww * (gram(us) - gram(ut)) ** 2).sum() / ww.sum().clamp_min(1e-5)


def relational_target(
    B: int, nb: int, ds: int, dt: int, device: str, compiled: Callable | None
) -> Case:
    """fwd+bwd (student and teacher get gradients) of B ragged examples of ~nb units."""
    gen = torch.Generator().manual_seed(0)
    counts, cu_cpu = ragged_examples(B, nb, gen)
    meta = {"plan_sizes": relational_plan_sizes(cu_cpu)}
    n, n_max = int(counts.sum()), int(counts.max())
    col = torch.arange(n_max)
    valid_cpu = col[None, :] < counts[:, None]
    idx_cpu = torch.where(valid_cpu, cu_cpu[:-1, None] + col[None, :], 0)
    dtype = torch.bfloat16
    us0 = torch.randn(n, ds, generator=gen).to(dtype).to(device)
    ut0 = (torch.randn(n, dt, generator=gen) + 0.3).to(dtype).to(device)
    w = torch.rand(n, generator=gen).to(device)
    cu, idx = cu_cpu.to(device), idx_cpu.to(device)
    valid = valid_cpu.to(device=device, dtype=torch.float32)
    bmm_fn = compiled or _padded_bmm_loss

    def make(impl: str) -> Callable[[], Any]:
        us, ut = us0.clone().requires_grad_(), ut0.clone().requires_grad_()
        fn: Callable[[], torch.Tensor] = {
            "mta_ext": lambda: mta_ext.relational_loss(us, ut, w, cu, **meta),
            "padded_bmm": lambda: bmm_fn(us, ut, w, idx, valid),
            "reference": lambda: reference.relational_loss(us, ut, w, cu),
        }[impl]

        def run() -> None:
            us.grad = ut.grad = None
            fn().backward()

        return run

    params = {
        "B": B,
        "N_b": nb,
        "N": n,
        "Ds": ds,
        "Dt": dt,
        "dtype": "bfloat16",
        "nominal_flops": 6 * int((counts * counts).sum()) * (ds + dt),
        "baseline": "padded bmm, " + ("torch.compile" if compiled else "eager"),
    }
    return Case(
        "relational_loss fwd+bwd", params, make, impls=("mta_ext", "padded_bmm", "reference")
    )


def token_salience_target(B: int, T: int, D: int, device: str) -> Case:
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(B, T, D, generator=gen).to(torch.bfloat16).to(device)
    lengths = torch.randint(int(0.75 * T), T + 1, (B,), generator=gen)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).to(device)

    def make(impl: str) -> Callable[[], Any]:
        fn = mta_ext.token_salience if impl == "mta_ext" else reference.token_salience
        return lambda: fn(hidden, mask)

    params = {"B": B, "T": T, "D": D, "dtype": "bfloat16", "nominal_flops": 4 * B * T * T * D}
    return Case("token_salience", params, make)


def target_cases(device: str, dry: bool, quick: bool, compile_baseline: bool) -> list[Case]:
    compiled = None
    if compile_baseline:
        compiled = torch.compile(_padded_bmm_loss, dynamic=True)
    if dry:
        return [
            segment_pool_target(512, 64, torch.float32, device),
            relational_target(2, 16, 32, 48, device, compiled),
            token_salience_target(2, 64, 32, device),
            row_cosine_case(256, 64, device),
        ]
    sp = [(4096, 576, torch.bfloat16), (32768, 4096, torch.bfloat16)]
    rl = [(8, 64, 576, 640), (8, 1024, 576, 640)]
    ts = [(8, 512, 576), (4, 4096, 2048)]
    rc = [(4096, 1600, torch.float32), (32768, 4096, torch.bfloat16)]
    if not quick:
        sp += [(65536, 4096, torch.bfloat16), (32768, 4096, torch.float32)]
        sp += [(65536, 576, torch.float32)]
        rl += [(8, 256, 576, 640), (8, 256, 2048, 4096)]
        ts += [(8, 2048, 576)]
        rc += [(4096, 1600, torch.bfloat16), (32768, 4096, torch.float32)]
    # The compiled baseline last: its compilation is the slowest part of the run.
    return (
        [segment_pool_target(t, d, dt, device) for t, d, dt in sp]
        + [token_salience_target(b, t, d, device) for b, t, d in ts]
        + [row_cosine_case(t, d, device, dt) for t, d, dt in rc]
        + [relational_target(b, nb, ds, dt, device, compiled) for b, nb, ds, dt in rl]
    )


@dataclasses.dataclass(frozen=True)
class Target:
    """One op's GPU target: a speed ratio against a baseline column of the same row, and the
    fraction of a ceiling measured in the same run: ``"copy"`` (the row's ``floor_mib`` bytes
    over the copy bandwidth) or ``"mm"`` (its ``nominal_flops`` over the bf16 matmul rate).
    ``min_frac`` ``None``: the fraction is reported, not judged. ``wants``: how the target
    names the baseline (default: the column's name)."""

    ceiling: str
    baseline: str
    min_x: float
    min_frac: float | None = None
    wants: str = ""


# By op name prefix (the module docstring says why each target is what it is).
TARGETS = {
    "segment_pool": Target("copy", "segment_reduce", 2, 0.7),
    "row_cosine": Target("copy", "reference", 3, 0.6),
    "relational_loss": Target("mm", "padded_bmm", 3, wants="padded bmm (compiled)"),
    "token_salience": Target("mm", "reference", 3),
}


def judge(row: dict, copy_Bps: float, mm_flops: float) -> None:
    """Add the target columns to a target row: frac_<ceiling>, x_<baseline>, achieved, target,
    ok (False too when the timed call waited for the host)."""
    tgt = next(v for k, v in TARGETS.items() if row["op"].startswith(k))
    t = row["mta_ext_median_ms"] * 1e-3
    if tgt.ceiling == "copy":
        frac = row["floor_mib"] * 2**20 / t / copy_Bps
    else:
        frac = row["nominal_flops"] / t / mm_flops
    x = row[f"{tgt.baseline}_median_ms"] / row["mta_ext_median_ms"]
    label = row.get("baseline", tgt.baseline.replace("_", " "))  # e.g. "padded bmm, compiled"
    row[f"frac_{tgt.ceiling}"], row[f"x_{tgt.baseline}"] = frac, x
    row["achieved"] = f"{x:.1f}x {label}, {100 * frac:.0f}% {tgt.ceiling}"
    row["target"] = f">= {tgt.min_x:g}x {tgt.wants or tgt.baseline.replace('_', ' ')}"
    row["ok"] = x >= tgt.min_x
    if tgt.min_frac is not None:
        row["target"] += f", >= {100 * tgt.min_frac:.0f}% {tgt.ceiling}"
        row["ok"] = row["ok"] and frac >= tgt.min_frac
    if row.get("host_sync") not in ("none", "none (simulated)", "-"):
        row["ok"] = False  # the timed path must not wait for the host


def _shape(r: dict) -> str:
    keys = ("tokens", "B", "T", "N_b", "D", "Ds", "Dt", "dtype")
    return " ".join(f"{k}={r[k]}" for k in keys if k in r)


def targets_table(res: dict) -> str:
    rows = []
    c, m = res.get("copy_GBps"), res.get("mm_bf16_TFLOPs")
    if c:
        rows.append({"case": "ceiling: copy d2d", "time_ms": "", "achieved": f"{c:.3g} GB/s"})
    if m:
        rows.append({"case": "ceiling: mm bf16", "time_ms": "", "achieved": f"{m:.3g} TFLOP/s"})
    for r in res.get("targets", []):
        rows.append(
            {
                "case": f"{r['op']} {_shape(r)}",
                "time_ms": r["mta_ext_median_ms"],
                "achieved": r["achieved"],
                "target": r["target"],
                "host_sync": r.get("host_sync", ""),
                "ok": "yes" if r["ok"] else "NO",
            }
        )
    return markdown_table(rows, ["case", "time_ms", "achieved", "target", "host_sync", "ok"])


# ------------------------------------------------------------------------------ main


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU (the script)")
    p.add_argument("--quick", action="store_true", help="fewer target cases (a rerun's budget)")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--json", default=None, help="write the results here (JSON)")
    p.add_argument(
        "--no-compile", action="store_true", help="padded-bmm baseline eager (no torch.compile)"
    )
    p.add_argument("--only", default="ceilings,ops,targets", help="comma-separated steps")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    dev = "cpu" if args.dry_run else args.device
    if args.dry_run:
        args.repeats, args.warmup = min(args.repeats, 3), 1
    elif dev.startswith("cuda"):
        if not torch.cuda.is_available():
            print("bench_gpu: no CUDA device (--dry-run: the script on a CPU)", file=sys.stderr)
            return 2
        if not mta_ext.build_info()["cuda"]:
            print("bench_gpu: mta_ext was built without CUDA kernels", file=sys.stderr)
            return 2
    only = set(args.only.split(","))
    res: dict[str, Any] = {"machine": machine_info(dev), "dry_run": args.dry_run}
    failed = False

    def dump() -> None:  # after every step: a run stopped by a time cap keeps what it measured
        if args.json:
            with open(args.json, "w") as f:
                json.dump(
                    res,
                    f,
                    indent=1,
                    default=lambda o: None if isinstance(o, float) and math.isnan(o) else str(o),
                )

    def step(name: str, fn: Callable[[], None]) -> None:
        nonlocal failed
        if name not in only:
            return
        t0 = time.perf_counter()
        try:
            fn()
        except Exception as exc:  # report and go on: one broken step must not hide the rest
            failed = True
            res[name + "_error"] = f"{type(exc).__name__}: {exc}"
            print(f"[bench_gpu] {name} FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        res.setdefault("step_seconds", {})[name] = round(time.perf_counter() - t0, 1)
        print(f"[bench_gpu] {name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
        if dev.startswith("cuda"):
            torch.cuda.empty_cache()
        dump()

    def ceilings() -> None:
        small = args.dry_run
        res["copy_GBps"] = copy_bandwidth(dev, 2**24 if small else None) / 1e9
        mm_dtype = torch.float32 if small else torch.bfloat16
        res["mm_bf16_TFLOPs"] = matmul_flops(dev, mm_dtype, 256 if small else None) / 1e12
        if small:
            res["mm_note"] = "dry run: fp32 256^3"
        c, m = res["copy_GBps"], res["mm_bf16_TFLOPs"]
        print(f"# ceilings: copy {c:.0f} GB/s, mm {m:.1f} TFLOP/s")

    def ops() -> None:
        bw = res["copy_GBps"] * 1e9 if "copy_GBps" in res else None
        payload = run_ops(
            dev, quick=args.dry_run, repeats=args.repeats, warmup=args.warmup, copy_bw=bw
        )
        res["ops"] = {k: payload[k] for k in ("copy_bandwidth_GBps", "rows", "table")}

    def targets() -> None:
        compile_baseline = not (args.no_compile or args.dry_run)
        cases = target_cases(dev, args.dry_run, args.quick, compile_baseline)
        rows = run_cases(cases, device=dev, repeats=args.repeats, warmup=args.warmup)
        copy_Bps = res.get("copy_GBps", float("nan")) * 1e9
        mm = res.get("mm_bf16_TFLOPs", float("nan")) * 1e12
        for r in rows:
            judge(r, copy_Bps, mm)
        res["targets"] = rows

    step("ceilings", ceilings)
    step("ops", ops)
    step("targets", targets)
    if "targets" in res or "copy_GBps" in res:
        res["targets_table"] = targets_table(res)
        print(res["targets_table"])
    sync_bad = [
        f"{r['op']} {_shape(r)}: {r['host_sync']}"
        for r in res.get("ops", {}).get("rows", []) + res.get("targets", [])
        if "fallback" not in r["op"] and not str(r.get("host_sync", "-")).startswith(("none", "-"))
    ]
    res["host_sync_failures"] = sync_bad
    for s in sync_bad:
        print(f"[bench_gpu] HOST SYNC on the timed path: {s}", file=sys.stderr)
    dump()
    return 1 if failed or sync_bad else 0


if __name__ == "__main__":
    sys.exit(main())
