"""GPU checks left open by the line-by-line review of the CUDA kernels (run by gpu_check.sh).

1. relational_loss: the fused op (loss and gradients for g = 1) equals forward + backward(1)
   bit for bit in every dtype;
2. bf16/fp16 tensor-core Gram tiles: the loss within rtol 2e-4 of the float64 reference on large
   cases (hundreds to thousands of units, widths up to 2048);
3. performance cliffs, each timed next to a friendly case of the same work (ratio of the times
   per unit of work, flagged above 10x): csr_sort's insertion sort with deeply overlapping units
   (O(depth^2)), one very long unit, token_salience on a batch of one (only B * ceil(T / 64)
   blocks) against 16 examples of a quarter of the tokens (the same B * T^2 pairs), the mirrored
   (uncoalesced) writes of E in the relational backward (one large example).

Every call passes its host metadata (``plan_sizes`` / ``num_incidences``, computed once on the
CPU), the path users run; the times are medians of ``benchmarks.common.time_fn`` (CUDA events).
Exit status 1 if check 1 or 2 fails; the cliffs only report. ``--dry-run`` runs tiny sizes on
the CPU (checks the script itself).
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

import mta_ext  # noqa: F401  (loads the ops)
from benchmarks.common import time_fn
from mta_ext import reference
from mta_ext._layout import relational_plan_sizes

ops = torch.ops.mta_ext


def _time(fn, dev: torch.device, reps: int = 5) -> float:
    """Median seconds of ``fn()`` (one warm-up run)."""
    return time_fn(fn, device=dev.type, warmup=1, repeats=reps)["median_s"]


def _incidences(ranges: torch.Tensor) -> int:
    """segment_pool's host metadata of CPU ``ranges``."""
    return int((ranges[:, 1] - ranges[:, 0]).clamp_min(0).sum())  # host sync: CPU only


def _units(sizes, ds, dt, dtype, dev, seed=0):
    """(u_student, u_teacher, weights, cu_units) on ``dev`` and the host ``plan_sizes``."""
    g = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    cu = torch.tensor([0, *torch.tensor(sizes).cumsum(0).tolist()])
    plan = relational_plan_sizes(cu)
    us = torch.randn(n, ds, generator=g).to(dtype).to(dev)
    ut = (torch.randn(n, dt, generator=g) + 0.5).to(dtype).to(dev)
    w = torch.rand(n, generator=g).to(dev)
    return (us, ut, w, cu.to(dev)), plan


def check_fused_bitwise(dev: torch.device, dry: bool) -> list[str]:
    bad = []
    sizes = [5, 70] if dry else [70, 1, 0, 130, 9, 600]
    for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        args, plan = _units(sizes, 40, 24, dtype, dev)
        loss, gs, gt = ops.relational_loss_and_grad(*args, True, True, plan)
        one = torch.ones((), device=dev, dtype=loss.dtype)
        bs, bt = ops.relational_loss_backward(one, *args, True, True, plan)
        ok = torch.equal(loss, ops.relational_loss(*args, plan)) and torch.equal(gs.to(dtype), bs)
        ok = ok and torch.equal(gt.to(dtype), bt)
        print(f"fused == separate, {dtype}: {'ok' if ok else 'DIFFERENT'}")
        if not ok:
            bad.append(f"fused vs separate {dtype}")
    return bad


def check_tensor_core_grams(dev: torch.device, dry: bool) -> list[str]:
    bad = []
    cases = (
        [([20, 9], 16, 24)]
        if dry
        else [([300], 1000, 2048), ([2000], 256, 512), ([65] * 40, 768, 1024)]
    )
    for dtype in (torch.bfloat16, torch.float16):
        for sizes, ds, dt in cases:
            (us, ut, w, cu), plan = _units(sizes, ds, dt, dtype, dev, seed=1)
            got = ops.relational_loss(us, ut, w, cu, plan).double().cpu()
            ref = reference.relational_loss(
                us.double().cpu(), ut.double().cpu(), w.double().cpu(), cu.cpu()
            )
            rel = abs(got.item() - ref.item()) / max(abs(ref.item()), 1e-30)
            ok = rel <= 2e-4
            print(
                f"tensor-core Gram {dtype} units {sum(sizes)} ({len(sizes)} ex) D {ds}/{dt}: "
                f"rel {rel:.2e} {'ok' if ok else 'FAIL'}"
            )
            if not ok:
                bad.append(f"Gram {dtype} {sizes[:2]} rel {rel:.2e}")
    return bad


def perf_cliffs(dev: torch.device, dry: bool) -> list[dict]:
    out = []
    s = 16 if dry else 1

    def row(name, slow, fast, work=1.0):  # work: the slow case's work / the friendly case's
        ts, tf = _time(slow, dev), _time(fast, dev)
        r = ts / max(tf * work, 1e-9)
        print(
            f"cliff {name}: {ts * 1e3:.3f} ms vs {tf * 1e3:.3f} ms friendly, "
            f"ratio {r:.1f}{'  <-- CLIFF' if r > 10 else ''}"
        )
        out.append({"case": name, "ms": ts * 1e3, "friendly_ms": tf * 1e3, "ratio": r})

    # csr_sort: N units all covering [0, M) -> depth N per token, insertion sort O(N^2) per token.
    m, d, depth = 4096 // s, 256 // s, 256 // s
    deep_cpu = torch.tensor([[0, m]] * depth)
    flat_cpu = torch.stack(
        [torch.arange(depth) * (m // depth), torch.arange(1, depth + 1) * (m // depth)], 1
    )
    p_deep, p_flat = _incidences(deep_cpu), _incidences(flat_cpu)
    deep, flat = deep_cpu.to(dev), flat_cpu.to(dev)
    g = torch.randn(depth, d, device=dev)
    row(
        f"segment_pool backward, overlap depth {depth}",
        lambda: ops.segment_pool_backward(g, deep, None, m, p_deep),
        lambda: ops.segment_pool_backward(g, flat, None, m, p_flat),
        work=float(depth),
    )
    # One very long unit vs many short ones over the same rows.
    rows_big = 131072 // s
    big = torch.randn(rows_big, 512 // s, device=dev)
    one_cpu = torch.tensor([[0, rows_big]])
    many_cpu = torch.stack([torch.arange(0, rows_big, 2), torch.arange(2, rows_big + 1, 2)], 1)
    p_one, p_many = _incidences(one_cpu), _incidences(many_cpu)
    one, many = one_cpu.to(dev), many_cpu.to(dev)
    row(
        f"segment_pool forward, one unit of {rows_big} rows",
        lambda: ops.segment_pool(big, one, None, p_one),
        lambda: ops.segment_pool(big, many, None, p_many),
    )
    # token_salience: B = 1 (B * ceil(T/64) blocks) vs the same work (B * T^2 pairs) spread
    # over 16 examples of T / 4 tokens: 16 * (T/4)^2 = T^2.
    t, d_ts = 4096 // s, 256 // s
    h1 = torch.randn(1, t, d_ts, device=dev)
    h16 = torch.randn(16, t // 4, d_ts, device=dev)
    m1 = torch.ones(1, t, dtype=torch.bool, device=dev)
    m16 = torch.ones(16, t // 4, dtype=torch.bool, device=dev)
    row(
        f"token_salience B=1 T={t} vs B=16 T={t // 4} (equal work)",
        lambda: ops.token_salience(h1, m1, 0),
        lambda: ops.token_salience(h16, m16, 0),
    )
    # Mirrored E writes: one example of n units vs n / 64 examples of 64.
    n = 4096 // s
    a1, plan1 = _units([n], 256 // s, 256 // s, torch.float32, dev)
    a64, plan64 = _units([64] * (n // 64), 256 // s, 256 // s, torch.float32, dev)
    row(
        f"relational fwd+bwd, one example of {n} units (per pair)",
        lambda: ops.relational_loss_and_grad(*a1, True, True, plan1),
        lambda: ops.relational_loss_and_grad(*a64, True, True, plan64),
        work=n / 64,
    )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU")
    p.add_argument("--device", default="cuda")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    dev = torch.device("cpu" if a.dry_run else a.device)
    bad = check_fused_bitwise(dev, a.dry_run) + check_tensor_core_grams(dev, a.dry_run)
    cliffs = perf_cliffs(dev, a.dry_run)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"failures": bad, "cliffs": cliffs}, f, indent=1)
    for b in bad:
        print("FAIL:", b)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
