"""Every op computes the same bits inside an autocast region as outside it.

The ops choose their own precision (fp32 accumulation; fp64 for fp64 inputs). Autocast must not
reach the ATen calls inside a kernel: it used to re-cast the Gram products of relational_loss to
bf16 and fail on mixed dtypes ("self and mat2 must have the same dtype") — which is exactly what
a bf16-autocast training step feeds it (fp32 residual stream on one side, bf16 on the other).
"""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICES, tdev

import mta_ext

AUTOCAST_DTYPES = [torch.bfloat16, torch.float16]


def _grads(out, inputs):
    return torch.autograd.grad(out.float().sum(), inputs)


def _relational(device, dt_s, dt_t):
    g = torch.Generator().manual_seed(0)
    us = torch.randn(9, 8, generator=g).to(device, dt_s).requires_grad_()
    ut = torch.randn(9, 5, generator=g).to(device, dt_t).requires_grad_()
    w = torch.rand(9, generator=g).to(device)
    cu = torch.tensor([0, 4, 4, 9], device=device)

    def run():
        loss = mta_ext.relational_loss(us, ut, w, cu)
        return (loss, *_grads(loss, [us, ut]))

    return run


def _segment_pool(device, dt):
    g = torch.Generator().manual_seed(1)
    h = torch.randn(12, 6, generator=g).to(device, dt).requires_grad_()
    ranges = torch.tensor([[0, 3], [2, 7], [7, 7], [9, 12]], device=device)
    w = torch.rand(12, generator=g).to(device)

    def run():
        out = mta_ext.segment_pool(h, ranges, w)
        return (out, *_grads(out, [h]))

    return run


def _salience(device, dt):
    g = torch.Generator().manual_seed(2)
    h = torch.randn(2, 7, 16, generator=g).to(device, dt)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3], device=device)
    return lambda: (mta_ext.token_salience(h, mask),)


CASES = {
    "relational_loss fp32/bf16": lambda d: _relational(d, torch.float32, torch.bfloat16),
    "relational_loss bf16/fp32": lambda d: _relational(d, torch.bfloat16, torch.float32),
    "relational_loss fp32/fp32": lambda d: _relational(d, torch.float32, torch.float32),
    "segment_pool fp32": lambda d: _segment_pool(d, torch.float32),
    "segment_pool bf16": lambda d: _segment_pool(d, torch.bfloat16),
    "token_salience fp32": lambda d: _salience(d, torch.float32),
    "token_salience bf16": lambda d: _salience(d, torch.bfloat16),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("autocast_dtype", AUTOCAST_DTYPES, ids=str)
@pytest.mark.parametrize("case", sorted(CASES))
def test_op_ignores_autocast(case, autocast_dtype, device):
    run = CASES[case](tdev(device))
    want = run()
    with torch.autocast(tdev(device), dtype=autocast_dtype):
        got = run()
    for a, b in zip(got, want, strict=True):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=0, atol=0)
