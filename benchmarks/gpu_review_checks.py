"""GPU checks left open by the line-by-line review of the CUDA kernels (run by gpu_check.sh).

1. relational_loss: the fused op (loss and gradients for g = 1) equals forward + backward(1)
   bit for bit in every dtype;
2. bf16/fp16 tensor-core Gram tiles: the loss within rtol 2e-4 of the float64 reference on large
   cases (hundreds to thousands of units, widths up to 2048);
3. performance cliffs, each timed next to a friendly case of the same size (ratio reported,
   flagged above 10x): csr_sort's insertion sort with deeply overlapping units (O(depth^2)),
   one very long unit, token_salience on a batch of one (only B * ceil(T / 64) blocks), the
   mirrored (uncoalesced) writes of E in the relational backward (one large example).

Exit status 1 if check 1 or 2 fails; the cliffs only report. ``--dry-run`` runs tiny sizes on
the CPU (checks the script itself).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

import mta_ext  # noqa: F401  (loads the ops)
from mta_ext import reference

ops = torch.ops.mta_ext


def _time(fn, dev: torch.device, reps: int = 5) -> float:
    fn()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def _units(sizes, ds, dt, dtype, dev, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    cu = torch.tensor([0, *torch.tensor(sizes).cumsum(0).tolist()], device=dev)
    us = torch.randn(n, ds, generator=g).to(dtype).to(dev)
    ut = (torch.randn(n, dt, generator=g) + 0.5).to(dtype).to(dev)
    w = torch.rand(n, generator=g).to(dev)
    return us, ut, w, cu


def check_fused_bitwise(dev: torch.device, dry: bool) -> list[str]:
    bad = []
    sizes = [5, 70] if dry else [70, 1, 0, 130, 9, 600]
    for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        args = _units(sizes, 40, 24, dtype, dev)
        loss, gs, gt = ops.relational_loss_and_grad(*args, True, True)
        one = torch.ones((), device=dev, dtype=loss.dtype)
        bs, bt = ops.relational_loss_backward(one, *args, True, True)
        ok = torch.equal(loss, ops.relational_loss(*args)) and torch.equal(gs.to(dtype), bs)
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
            us, ut, w, cu = _units(sizes, ds, dt, dtype, dev, seed=1)
            got = ops.relational_loss(us, ut, w, cu).double().cpu()
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
    deep = torch.tensor([[0, m]] * depth, device=dev)
    flat = torch.stack(
        [torch.arange(depth) * (m // depth), torch.arange(1, depth + 1) * (m // depth)], 1
    ).to(dev)
    g = torch.randn(depth, d, device=dev)
    row(
        f"segment_pool backward, overlap depth {depth}",
        lambda: ops.segment_pool_backward(g, deep, None, m),
        lambda: ops.segment_pool_backward(g, flat, None, m),
        work=float(depth),
    )
    # One very long unit vs many short ones over the same rows.
    big = torch.randn(131072 // s, 512 // s, device=dev)
    one = torch.tensor([[0, big.shape[0]]], device=dev)
    many = torch.stack(
        [torch.arange(0, big.shape[0], 2), torch.arange(2, big.shape[0] + 1, 2)], 1
    ).to(dev)
    row(
        f"segment_pool forward, one unit of {big.shape[0]} rows",
        lambda: ops.segment_pool(big, one, None),
        lambda: ops.segment_pool(big, many, None),
    )
    # token_salience: B = 1 (B * ceil(T/64) blocks) vs the same tokens over B = 16.
    t = 4096 // s
    h1 = torch.randn(1, t, 256 // s, device=dev)
    h16 = h1.reshape(16, t // 16, -1)
    row(
        f"token_salience B=1 T={t}",
        lambda: ops.token_salience(h1, torch.ones(1, t, dtype=torch.bool, device=dev), 0),
        lambda: ops.token_salience(h16, torch.ones(16, t // 16, dtype=torch.bool, device=dev), 0),
    )
    # Mirrored E writes: one example of n units vs n / 64 examples of 64.
    n = 4096 // s
    a1 = _units([n], 256 // s, 256 // s, torch.float32, dev)
    a64 = _units([64] * (n // 64), 256 // s, 256 // s, torch.float32, dev)
    row(
        f"relational fwd+bwd, one example of {n} units (per pair)",
        lambda: ops.relational_loss_and_grad(*a1, True, True),
        lambda: ops.relational_loss_and_grad(*a64, True, True),
        work=n / 64,
    )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    dev = torch.device("cpu" if a.dry_run else "cuda")
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
