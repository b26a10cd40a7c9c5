"""GPU benchmarks of the mta_ext CUDA kernels against their performance targets.

Measures, in one process on one card: the copy bandwidth (a large device-to-device copy, bytes
read + written) and the bf16 matrix rate (8192^3 torch.mm) as the ceilings, then

* segment_pool forward+backward at B*T = 32768 tokens, D = 4096, bf16, N = 0.4 * B*T units:
  bytes that must move (hidden read, out written, grad_out read, grad_hidden written) over the
  time, against the measured copy bandwidth (target >= 70 %), and vs the reference;
* relational_loss forward+backward (N_b >= 256, D >= 2048, bf16) vs the reference (target >= 5x)
  and against the bf16 rate (target >= 30 %), counting the nominal dense FLOPs
  6 * sum_b N_b^2 * (Ds + Dt) (forward Grams + the two backward products per side, as a dense
  PyTorch version does them; the kernel visits only the upper triangle of each Gram);
* token_salience (no performance target; reported vs the reference).

Timing: CUDA events around each call, warm-up first, median of many runs, inputs rotated among
several sets so repeated runs do not measure the cache; peak memory from
torch.cuda.max_memory_allocated. Writes JSON (--json) and prints one short table.

``--dry-run`` runs tiny sizes on the CPU (wall clock) to check the script itself without a GPU.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch


def _parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", default=None, help="write the results here (JSON)")
    p.add_argument("--reps", type=int, default=30, help="timed runs per case (median)")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs first")
    p.add_argument("--sets", type=int, default=3, help="input sets rotated between runs")
    p.add_argument(
        "--dry-run", action="store_true", help="tiny sizes on the CPU (checks the script)"
    )
    p.add_argument(
        "--only",
        default="copy,mm,segment_pool,relational_loss,token_salience",
        help="comma-separated subset of cases",
    )
    return p.parse_args(argv)


class Timer:
    """Median time in ms of fn(*inputs[i % len(inputs)]) with CUDA events (wall clock on CPU)."""

    def __init__(self, device: torch.device, warmup: int, reps: int):
        self.device, self.warmup, self.reps = device, warmup, reps
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def __call__(
        self, fn: Callable[..., Any], inputs: list[tuple], reps: int | None = None
    ) -> dict:
        reps = reps or self.reps
        for i in range(self.warmup):
            fn(*inputs[i % len(inputs)])
        self.sync()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
            base = torch.cuda.memory_allocated(self.device)
        times = []
        for i in range(reps):
            args = inputs[i % len(inputs)]
            if self.cuda:
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                fn(*args)
                end.record()
                times.append((start, end))
            else:
                t0 = time.perf_counter()
                fn(*args)
                times.append((time.perf_counter() - t0) * 1e3)
        self.sync()
        ms = [s.elapsed_time(e) for s, e in times] if self.cuda else times
        peak = (torch.cuda.max_memory_allocated(self.device) - base) if self.cuda else 0
        return {
            "median_ms": statistics.median(ms),
            "min_ms": min(ms),
            "max_ms": max(ms),
            "reps": reps,
            "peak_extra_bytes": int(peak),
        }


# ------------------------------------------------------------------------------ ceilings


def bench_copy(t: Timer, dev: torch.device, dry: bool) -> dict:
    n = (1 << 16) if dry else (1 << 30)  # 1 GiB per buffer on the GPU
    xs = [torch.empty(n, dtype=torch.uint8, device=dev).random_(0, 255) for _ in range(2)]
    y = torch.empty(n, dtype=torch.uint8, device=dev)
    r = t(lambda x: y.copy_(x), [(x,) for x in xs])
    r["bytes"] = 2 * n
    r["GBps"] = 2 * n / (r["median_ms"] * 1e-3) / 1e9
    return r


def bench_mm(t: Timer, dev: torch.device, dry: bool) -> dict:
    n = 256 if dry else 8192
    dt = torch.float32 if dry else torch.bfloat16
    sets = [
        (torch.randn(n, n, device=dev, dtype=dt), torch.randn(n, n, device=dev, dtype=dt))
        for _ in range(2)
    ]
    r = t(torch.mm, sets)
    r["TFLOPs"] = 2 * n**3 / (r["median_ms"] * 1e-3) / 1e12
    return r


# ------------------------------------------------------------------------------ ops


def _unit_ranges(m: int, n: int, gen: torch.Generator) -> torch.Tensor:
    """n ranges of 1..5 tokens over [0, m), sorted by start, partly overlapping (words+phrases)."""
    starts = torch.sort(torch.randint(0, m, (n,), generator=gen)).values
    lengths = torch.randint(1, 6, (n,), generator=gen)
    ends = torch.minimum(starts + lengths, torch.tensor(m))
    return torch.stack([starts, ends], 1)


def bench_segment_pool(t: Timer, dev: torch.device, dry: bool, sets: int) -> dict:
    import mta_ext
    from mta_ext import reference

    ops = torch.ops.mta_ext
    m, d = (256, 64) if dry else (32768, 4096)
    n = int(0.4 * m)
    dt = torch.bfloat16
    gen = torch.Generator().manual_seed(0)
    inputs = []
    for _ in range(sets):
        h = torch.randn(m, d, device=dev, dtype=dt)
        r = _unit_ranges(m, n, gen).to(dev)
        w = torch.rand(m, generator=gen).to(dev)
        g = torch.randn(n, d, device=dev, dtype=dt)
        inputs.append((h, r, w, g))

    def fwd_bwd(h, r, w, g):
        out = ops.segment_pool(h, r, w)
        return out, ops.segment_pool_backward(g, r, w, m)

    def ref_fwd_bwd(h, r, w, g):
        hh = h.detach().requires_grad_(True)
        out = reference.segment_pool(hh, r, w)
        return torch.autograd.grad(out, hh, g)

    res = {"M": m, "D": d, "N": n, "dtype": "bfloat16"}
    res["fwd"] = t(lambda h, r, w, g: ops.segment_pool(h, r, w), inputs)
    res["bwd"] = t(lambda h, r, w, g: ops.segment_pool_backward(g, r, w, m), inputs)
    res["fwd_bwd"] = t(fwd_bwd, inputs)
    res["reference_fwd_bwd"] = t(ref_fwd_bwd, inputs, reps=max(5, t.reps // 3))
    elt = torch.finfo(dt).bits // 8
    floor = (2 * m * d + 2 * n * d) * elt  # hidden in, out, grad_out in, grad_hidden out
    res["floor_bytes"] = floor
    res["GBps"] = floor / (res["fwd_bwd"]["median_ms"] * 1e-3) / 1e9
    res["speedup_vs_reference"] = (
        res["reference_fwd_bwd"]["median_ms"] / res["fwd_bwd"]["median_ms"]
    )
    res["_mta_ext_version"] = mta_ext.__version__
    return res


def bench_relational_loss(t: Timer, dev: torch.device, dry: bool, sets: int) -> list[dict]:
    from mta_ext import reference

    ops = torch.ops.mta_ext
    configs = (
        [(4, 16, 32, 32)]
        if dry
        else [(32, 256, 2048, 2048), (16, 512, 2048, 2048), (64, 256, 4096, 2048)]
    )
    out = []
    one = torch.ones((), device=dev)
    for b, nb, ds, dtd in configs:
        dt = torch.bfloat16
        cu = torch.arange(0, (b + 1) * nb, nb, device=dev)
        n = b * nb
        inputs = []
        for _ in range(sets):
            us = torch.randn(n, ds, device=dev, dtype=dt)
            ut = torch.randn(n, dtd, device=dev, dtype=dt) + 0.3
            w = torch.rand(n, device=dev)
            inputs.append((us, ut, w, cu))

        def fwd_bwd(us, ut, w, cu):
            # What mta_ext.ops.relational_loss runs when the inputs require grad: the fused
            # op when it exists, else forward + backward.
            if hasattr(ops, "relational_loss_and_grad"):
                return ops.relational_loss_and_grad(us, ut, w, cu, True, True)
            loss = ops.relational_loss(us, ut, w, cu)
            return loss, ops.relational_loss_backward(one, us, ut, w, cu, True, True)

        def ref_fwd_bwd(us, ut, w, cu):
            a = us.detach().requires_grad_(True)
            c = ut.detach().requires_grad_(True)
            loss = reference.relational_loss(a, c, w, cu)
            return torch.autograd.grad(loss, (a, c))

        r: dict[str, Any] = {"B": b, "N_b": nb, "Ds": ds, "Dt": dtd, "dtype": "bfloat16"}
        r["fwd"] = t(lambda us, ut, w, cu: ops.relational_loss(us, ut, w, cu), inputs)
        r["fwd_bwd"] = t(fwd_bwd, inputs)
        r["reference_fwd_bwd"] = t(ref_fwd_bwd, inputs, reps=max(5, t.reps // 3))
        flops = 6 * b * nb * nb * (ds + dtd)
        r["nominal_flops"] = flops
        r["TFLOPs"] = flops / (r["fwd_bwd"]["median_ms"] * 1e-3) / 1e12
        r["speedup_vs_reference"] = r["reference_fwd_bwd"]["median_ms"] / r["fwd_bwd"]["median_ms"]
        out.append(r)
    return out


def bench_token_salience(t: Timer, dev: torch.device, dry: bool, sets: int) -> list[dict]:
    from mta_ext import reference

    ops = torch.ops.mta_ext
    configs = [(2, 32, 16)] if dry else [(8, 1024, 2048), (4, 2048, 4096)]
    out = []
    for b, tt, d in configs:
        inputs = []
        for _ in range(sets):
            h = torch.randn(b, tt, d, device=dev, dtype=torch.bfloat16)
            mask = torch.ones(b, tt, dtype=torch.bool, device=dev)
            mask[:, tt - tt // 8 :] = False  # some right padding
            inputs.append((h, mask))
        r: dict[str, Any] = {"B": b, "T": tt, "D": d, "dtype": "bfloat16"}
        r["fwd"] = t(lambda h, m: ops.token_salience(h, m, 0), inputs)
        r["reference"] = t(
            lambda h, m: reference.token_salience(h, m), inputs, reps=max(3, t.reps // 5)
        )
        flops = 2 * 2 * b * tt * tt * d  # two passes over the T x T dot products
        r["TFLOPs"] = flops / (r["fwd"]["median_ms"] * 1e-3) / 1e12
        r["speedup_vs_reference"] = r["reference"]["median_ms"] / r["fwd"]["median_ms"]
        out.append(r)
    return out


# ------------------------------------------------------------------------------ report


def _table(res: dict) -> str:
    rows = [("case", "time (ms)", "achieved", "target", "ok")]
    copy = res.get("copy", {}).get("GBps")
    mm = res.get("mm", {}).get("TFLOPs")
    if copy:
        rows.append(
            ("copy 1 GiB d2d", f"{res['copy']['median_ms']:.3f}", f"{copy:.0f} GB/s", "ceiling", "")
        )
    if mm:
        rows.append(
            ("mm bf16 8192^3", f"{res['mm']['median_ms']:.3f}", f"{mm:.0f} TFLOP/s", "ceiling", "")
        )
    sp = res.get("segment_pool")
    if sp and copy:
        frac = sp["GBps"] / copy
        rows.append(
            (
                f"segment_pool f+b M={sp['M']} D={sp['D']}",
                f"{sp['fwd_bwd']['median_ms']:.3f}",
                f"{sp['GBps']:.0f} GB/s = {100 * frac:.0f}% copy",
                ">= 70% copy",
                "yes" if frac >= 0.7 else "NO",
            )
        )
        rows.append(
            (
                "  vs reference",
                f"{sp['reference_fwd_bwd']['median_ms']:.3f}",
                f"{sp['speedup_vs_reference']:.1f}x",
                "",
                "",
            )
        )
    for r in res.get("relational_loss", []):
        frac = r["TFLOPs"] / mm if mm else float("nan")
        ok = r["speedup_vs_reference"] >= 5 and frac >= 0.3
        rows.append(
            (
                f"relational f+b B={r['B']} Nb={r['N_b']} D={r['Ds']}/{r['Dt']}",
                f"{r['fwd_bwd']['median_ms']:.3f}",
                f"{r['speedup_vs_reference']:.1f}x ref, {100 * frac:.0f}% mm",
                ">= 5x, >= 30% mm",
                "yes" if ok else "NO",
            )
        )
    for r in res.get("token_salience", []):
        rows.append(
            (
                f"token_salience B={r['B']} T={r['T']} D={r['D']}",
                f"{r['fwd']['median_ms']:.3f}",
                f"{r['speedup_vs_reference']:.1f}x ref, {r['TFLOPs']:.1f} TFLOP/s",
                "-",
                "",
            )
        )
    widths = [max(len(str(row[i])) for row in rows) for i in range(5)]
    return "\n".join(
        "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows
    )


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.dry_run:
        dev = torch.device("cpu")
        args.reps, args.warmup, args.sets = min(args.reps, 3), 1, 2
    else:
        if not torch.cuda.is_available():
            print(
                "bench_gpu.py: no CUDA device (use --dry-run to check the script on a CPU)",
                file=sys.stderr,
            )
            return 2
        dev = torch.device("cuda")
    import mta_ext

    info = mta_ext.build_info()
    if not args.dry_run and not info["cuda"]:
        print("bench_gpu.py: mta_ext was built without CUDA kernels", file=sys.stderr)
        return 2
    only = set(args.only.split(","))
    t = Timer(dev, args.warmup, args.reps)
    res: dict[str, Any] = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu (dry run)",
        "torch": torch.__version__,
        "build_info": {k: v for k, v in info.items() if k != "threads_used"},
        "dry_run": args.dry_run,
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    torch.manual_seed(0)
    steps: list[tuple[str, Callable[[], Any]]] = [
        ("copy", lambda: bench_copy(t, dev, args.dry_run)),
        ("mm", lambda: bench_mm(t, dev, args.dry_run)),
        ("segment_pool", lambda: bench_segment_pool(t, dev, args.dry_run, args.sets)),
        ("relational_loss", lambda: bench_relational_loss(t, dev, args.dry_run, args.sets)),
        ("token_salience", lambda: bench_token_salience(t, dev, args.dry_run, args.sets)),
    ]
    failed = False
    for name, step in steps:
        if name not in only:
            continue
        if name in ("relational_loss", "token_salience") and not hasattr(torch.ops.mta_ext, name):
            res[name + "_skipped"] = "op not in this build"
            continue
        t0 = time.perf_counter()
        try:
            res[name] = step()
        except Exception as exc:  # report and go on: one broken case must not hide the rest
            failed = True
            res[name + "_error"] = f"{type(exc).__name__}: {exc}"
            print(f"[bench_gpu] {name} FAILED: {exc}", file=sys.stderr)
        print(f"[bench_gpu] {name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                res,
                f,
                indent=1,
                default=lambda o: None if isinstance(o, float) and math.isnan(o) else str(o),
            )
    print(f"device: {res['device']}  torch {res['torch']}")
    print(_table(res))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
