"""Run every CUDA op once on small ragged inputs (forward and backward), for compute-sanitizer.

Small on purpose: memcheck/racecheck slow kernels down by 10-100x. Exits non-zero if an op
raises or returns a non-finite value.
"""

from __future__ import annotations

import sys

import torch

import mta_ext  # noqa: F401  (loads the ops)


def main() -> int:
    dev = torch.device("cuda")
    ops = torch.ops.mta_ext
    torch.manual_seed(0)
    outs = []
    for dt in (torch.bfloat16, torch.float32, torch.float64):
        for d in (7, 64, 136):  # unaligned rows, vector path, two column chunks
            h = torch.randn(50, d, device=dev, dtype=dt)
            r = torch.tensor([[0, 3], [2, 9], [9, 9], [0, 50], [40, 50], [5, 6]], device=dev)
            w = torch.rand(50, device=dev)
            out = ops.segment_pool(h, r, w)
            outs += [out, ops.segment_pool_backward(out, r, w, 50), ops.segment_pool(h, r, None)]
        if hasattr(ops, "token_salience"):
            h = torch.randn(3, 70, 33, device=dev, dtype=dt)
            m = torch.ones(3, 70, dtype=torch.bool, device=dev)
            m[1, 50:] = False
            m[2, 1:] = False
            outs.append(ops.token_salience(h, m, 0))
        if hasattr(ops, "relational_loss"):
            cu = torch.tensor([0, 1, 67, 70, 200], device=dev)
            us = torch.randn(200, 40, device=dev, dtype=dt)
            ut = torch.randn(200, 24, device=dev, dtype=dt)
            w = torch.rand(200, device=dev)
            outs.append(ops.relational_loss(us, ut, w, cu))
            one = torch.ones((), device=dev)
            outs += list(ops.relational_loss_backward(one, us, ut, w, cu, True, True))
            if hasattr(ops, "relational_loss_and_grad"):
                outs += list(ops.relational_loss_and_grad(us, ut, w, cu, True, False))
    torch.cuda.synchronize()
    bad = [i for i, o in enumerate(outs) if not torch.isfinite(o).all()]
    if bad:
        print(f"sanitize_smoke: non-finite outputs at {bad}", file=sys.stderr)
        return 1
    print(f"sanitize_smoke: {len(outs)} outputs finite")
    return 0


if __name__ == "__main__":
    sys.exit(main())
