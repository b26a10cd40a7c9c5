"""relational_loss (DSA) forward+backward: mta_ext vs the reference (per-example loop)."""

from __future__ import annotations

import torch

import mta_ext
from benchmarks.common import Case
from mta_ext import reference


def _case(B: int, nb: int, ds: int, dt: int, device: str, dtype=torch.float32) -> Case:
    gen = torch.Generator().manual_seed(0)
    # ragged: N_b uniform in [nb/2, 3nb/2]
    counts = torch.randint(max(1, nb // 2), 3 * nb // 2 + 1, (B,), generator=gen)
    cu = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)]).to(device)
    n = int(counts.sum())
    us = torch.randn(n, ds, generator=gen).to(dtype).to(device)
    ut = torch.randn(n, dt, generator=gen).to(dtype).to(device)
    w = torch.rand(n, generator=gen).to(device)

    def make(impl):
        fn = mta_ext.relational_loss if impl == "mta_ext" else reference.relational_loss
        u = us.clone().requires_grad_()  # the student gets a gradient, the teacher does not

        def run():
            u.grad = None
            fn(u, ut, w, cu).backward()

        return run

    params = {
        "B": B,
        "N_b": nb,
        "N": n,
        "Ds": ds,
        "Dt": dt,
        "dtype": str(dtype).replace("torch.", ""),
    }
    return Case("relational_loss fwd+bwd", params, make)


def cases(device: str, quick: bool) -> list[Case]:
    if quick:
        return [_case(2, 32, 576, 640, device)]
    return [_case(8, nb, 576, dt, device) for nb in (64, 256) for dt in (640, 2048)] + [
        _case(8, 256, 576, 2048, device, torch.bfloat16)
    ]


def sweeps(device: str, quick: bool) -> dict[str, list[Case]]:
    """Quadratic in units per example (the Gram matrices), linear in width."""
    nbs = [16, 64] if quick else [16, 32, 64, 128, 256, 512]
    return {"N_b": [_case(2 if quick else 8, nb, 576, 640, device) for nb in nbs]}
