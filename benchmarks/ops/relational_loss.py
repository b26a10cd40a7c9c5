"""relational_loss (DSA) forward+backward: mta_ext vs the reference (per-example loop).

The timed path is the one ``structural_loss`` runs: ``plan_sizes`` (the CUDA tile plan's sizes,
host metadata) computed once per input set on the CPU from the CPU ``cu_units`` and passed to
every call. One labelled row (``[raw-op fallback]``) times the call without it: one host sync
per call on CUDA.
"""

from __future__ import annotations

import torch

import mta_ext
from benchmarks.common import Case
from mta_ext import reference
from mta_ext._layout import relational_plan_sizes


def ragged_examples(B: int, nb: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``(counts [B], cu_units [B+1])`` on the CPU: example ``b`` has ``counts[b]`` units, drawn
    uniformly in ``[nb/2, 3nb/2]``."""
    counts = torch.randint(max(1, nb // 2), 3 * nb // 2 + 1, (B,), generator=gen)
    return counts, torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])


def _case(
    B: int, nb: int, ds: int, dt: int, device: str, dtype=torch.float32, *, fallback: bool = False
) -> Case:
    """fwd+bwd of B ragged examples of ~``nb`` units; ``fallback``: without ``plan_sizes``."""
    gen = torch.Generator().manual_seed(0)
    counts, cu_cpu = ragged_examples(B, nb, gen)
    meta = {} if fallback else {"plan_sizes": relational_plan_sizes(cu_cpu)}
    cu = cu_cpu.to(device)
    n = int(counts.sum())
    us = torch.randn(n, ds, generator=gen).to(dtype).to(device)
    ut = torch.randn(n, dt, generator=gen).to(dtype).to(device)
    w = torch.rand(n, generator=gen).to(device)

    def make(impl):
        u = us.clone().requires_grad_()  # the student gets a gradient, the teacher does not
        if impl == "mta_ext":

            def run():
                u.grad = None
                mta_ext.relational_loss(u, ut, w, cu, **meta).backward()

        else:

            def run():
                u.grad = None
                reference.relational_loss(u, ut, w, cu).backward()

        return run

    params = {
        "B": B,
        "N_b": nb,
        "N": n,
        "Ds": ds,
        "Dt": dt,
        "dtype": str(dtype).replace("torch.", ""),
    }
    op = "relational_loss fwd+bwd" + (" [raw-op fallback]" if fallback else "")
    return Case(op, params, make)


def cases(device: str, quick: bool) -> list[Case]:
    """The table's cases, then the first one again without host metadata (the labelled
    raw-op fallback row)."""
    if quick:
        out = [_case(2, 32, 576, 640, device)]
    else:
        out = [_case(8, nb, 576, dt, device) for nb in (64, 256) for dt in (640, 2048)] + [
            _case(8, 256, 576, 2048, device, torch.bfloat16)
        ]
    first = out[0].params
    return [*out, _case(first["B"], first["N_b"], 576, first["Dt"], device, fallback=True)]


def sweeps(device: str, quick: bool) -> dict[str, list[Case]]:
    """Quadratic in units per example (the Gram matrices), linear in width."""
    nbs = [16, 64] if quick else [16, 32, 64, 128, 256, 512]
    return {"N_b": [_case(2 if quick else 8, nb, 576, 640, device) for nb in nbs]}
