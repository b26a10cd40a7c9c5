"""Helpers shared by the tests (imported normally: pytest puts python_tests/ on sys.path).

The devices every op test runs on (:data:`DEVICES`), the ONE tolerance table
(:data:`TOLERANCES`), input builders for fresh random cases, output checks, the reference
gradient bound and the debug-mode switch. ``conftest.py`` keeps the fixtures only; the per-op
sample inputs live in ``op_registry.py``.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator

import torch

import mta_ext
from mta_ext import _simt, reference

# The ONE tolerance table of the op tests, per kind of comparison and dtype:
# * "vs_fp64": an op's output for low-precision inputs vs the float64 reference on the same
#   (rounded) inputs, fixed seeds. Outputs of bf16 have 8 mantissa bits (rel. step 2**-8 ~
#   3.9e-3); accumulation is fp32, so the error is dominated by the input/output rounding.
# * "kernel": a kernel (any device) vs the float64 reference on fresh random inputs (ragged,
#   empty, overlapping, misaligned), forward and backward; summation orders differ per device.
TOLERANCES = {
    "vs_fp64": {
        torch.float16: dict(atol=2e-3, rtol=2e-3),
        torch.bfloat16: dict(atol=1.6e-2, rtol=1.6e-2),
        torch.float32: dict(atol=1e-5, rtol=1e-5),
        torch.float64: dict(atol=1e-12, rtol=1e-12),
    },
    "kernel": {
        torch.float64: dict(rtol=1e-10, atol=1e-12),
        torch.float32: dict(rtol=2e-5, atol=2e-6),
        torch.bfloat16: dict(rtol=1.6e-2, atol=1e-2),
        torch.float16: dict(rtol=2e-3, atol=1e-3),
    },
}
LOW_PRECISION_TOL = TOLERANCES["vs_fp64"]

CUDA = torch.cuda.is_available()
# The SIMT backend (a test build's CUDA kernels executed on the CPU): the device "simt", whose
# tensors live on the CPU while the test runs inside mta_ext._simt.enabled() (see _simt_device).
SIMT = _simt.available()
# Every op test runs on each available device: CPU always, the CUDA kernels on the SIMT backend
# when built, CUDA when present. GPU_DEVICES: where the CUDA kernels run.
DEVICES = ["cpu"] + (["simt"] if SIMT else []) + (["cuda"] if CUDA else [])
GPU_DEVICES = [d for d in DEVICES if d != "cpu"]


def tdev(device: str) -> str:
    """The torch device of a test device: "simt" tensors are CPU tensors."""
    return "cpu" if device == "simt" else device


def simt_seed(nodeid: str) -> int:
    """The SIMT device's shuffle seed for a test: fixed per test id (MTA_SIMT_SEED overrides)."""
    env = os.environ.get("MTA_SIMT_SEED")
    if env is not None:
        return int(env)
    h = 0
    for ch in nodeid.encode():
        h = (h * 131 + ch) % (2**31 - 1)
    return h


@contextlib.contextmanager
def cpu_kernels() -> Iterator[None]:
    """Inside a "simt" test: run the ops' CPU kernels in the block (a CPU-kernel baseline to
    compare the CUDA kernels with). Elsewhere: nothing changes."""
    with _simt.suspended():
        yield


def random_ranges(
    num_rows: int,
    num_units: int,
    *,
    generator: torch.Generator,
    max_len: int = 6,
    allow_empty: bool = True,
) -> torch.Tensor:
    """``[num_units, 2]`` int64 ranges inside ``[0, num_rows]``: overlapping, some empty."""
    if num_units == 0:
        return torch.zeros(0, 2, dtype=torch.long)
    starts = torch.randint(0, num_rows + 1, (num_units,), generator=generator)
    lens = torch.randint(0 if allow_empty else 1, max_len + 1, (num_units,), generator=generator)
    ends = torch.minimum(starts + lens, torch.tensor(num_rows))
    if not allow_empty:
        starts = torch.minimum(starts, ends - 1).clamp_min(0)
    return torch.stack([starts, ends], 1)


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
