"""Helpers shared by the op tests (test_segment_pool.py, test_token_salience.py,
test_relational_loss.py): input generators for fresh random cases, output checks, the
reference gradient bound, and the debug-mode switch. The tolerances live in ONE table,
``conftest.TOLERANCES``; the devices in ``conftest.DEVICES``.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import torch
from conftest import TOLERANCES

import mta_ext
from mta_ext import reference

ops = torch.ops.mta_ext
FLOATS = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


def _tol(dtype: torch.dtype) -> dict:
    """Kernel vs the float64 reference on fresh random inputs (any device)."""
    return TOLERANCES["kernel"][dtype]


def _finite(*ts: torch.Tensor) -> None:
    for t in ts:
        assert torch.isfinite(t).all(), "non-finite output element (unwritten or overflow)"


@contextlib.contextmanager
def value_checks_on(device: str) -> Iterator[None]:
    """Value checks (ranges, cu_units, weights) run on CPU tensors always and on other devices
    only in the debug mode: switch it on for a non-CPU device inside the block."""
    was = mta_ext.debug_enabled()
    mta_ext.set_debug(was or device != "cpu")
    try:
        yield
    finally:
        mta_ext.set_debug(was)


def _ranges(rng: random.Random, m: int, n: int, max_len: int) -> torch.Tensor:
    out = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.1 or m == 0:
            s = rng.randint(0, m)
            out.append((s, s))  # empty
        elif kind < 0.15:
            out.append((0, m))  # covers everything: deep overlap
        else:
            s = rng.randint(0, m - 1)
            out.append((s, min(m, s + rng.randint(1, max_len))))
    return torch.tensor(out, dtype=torch.long).reshape(n, 2)


def _misaligned(x: torch.Tensor) -> torch.Tensor:
    """Same values, contiguous, data pointer off 16-byte alignment by one element."""
    buf = torch.empty(x.numel() + 1, dtype=x.dtype, device=x.device)
    y = buf[1:].view_as(x)
    y.copy_(x)
    return y


def _random_mask(rng: random.Random, b: int, t: int) -> torch.Tensor:
    m = torch.zeros(b, t, dtype=torch.bool)
    for i in range(b):
        kind = rng.random()
        n = rng.randint(0, t)
        if kind < 0.1:
            n = 0
        elif kind < 0.2:
            n = min(t, 1)
        if rng.random() < 0.5:
            m[i, :n] = True  # right padding
        else:
            m[i, t - n :] = True  # left padding
        if rng.random() < 0.2:
            m[i] = torch.rand(t) < 0.7  # holes
    return m


def _units(
    rng: random.Random, sizes: list[int], ds: int, dt: int, dtype_s, dtype_t, zero_row: bool = False
):
    n = sum(sizes)
    cu = torch.tensor([0, *torch.tensor(sizes, dtype=torch.long).cumsum(0).tolist()])
    us = torch.randn(n, ds, dtype=torch.float64)
    ut = torch.randn(n, dt, dtype=torch.float64) + 0.5  # correlated teacher units
    if zero_row and n > 2:
        us[rng.randrange(n)] = 0.0  # a zero-norm unit: the clamped normalisation path
    w = torch.rand(n, dtype=torch.float64)
    if n:
        w[torch.rand(n) < 0.1] = 0.0
    return us.to(dtype_s), ut.to(dtype_t), w.to(torch.float32), cu


def _rl_grad_bound(us, ut, w, cu, g: float) -> float:
    """max_i of the a-priori bound |dL/du_i| <= 8 g W_i sum_{j != i} W_j / (Z max(|u_i|, 1e-12))
    (|cS - cT| <= 2 and |d c_ij / d u_i| <= 1 / max(|u_i|, eps)), over both sides."""
    w = w.double()
    c = w.max().item() if w.numel() else 0.0
    if c <= 0:
        return 0.0
    w = w / c
    z, rows = 0.0, []
    for b in range(len(cu) - 1):
        a, e = int(cu[b]), int(cu[b + 1])
        if e - a >= 2:
            z += (w[a:e].sum() ** 2 - (w[a:e] ** 2).sum()).item()
            rows.append((a, e))
    z = max(z, 1e-5 / c / c)
    bound = 0.0
    for u in (us, ut):
        nrm = u.double().norm(dim=1).clamp_min(1e-12)
        for a, e in rows:
            bnd = 8 * g * w[a:e] * (w[a:e].sum() - w[a:e]) / (z * nrm[a:e])
            bound = max(bound, bnd.max().item())
    return bound


def _rl_ref(us, ut, w, cu, need_grad=True):
    usr = us.double().requires_grad_(need_grad)
    utr = ut.double().requires_grad_(need_grad)
    loss = reference.relational_loss(usr, utr, w.double(), cu)
    return loss, usr, utr
