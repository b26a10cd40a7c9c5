"""Every op computes the same bits inside an autocast region as outside it.

The ops choose their own precision (fp32 accumulation; fp64 for fp64 inputs). Autocast must not
reach the ATen calls inside a kernel: it used to re-cast the Gram products of relational_loss to
bf16 and fail on mixed dtypes ("self and mat2 must have the same dtype") — which is exactly what
a bf16-autocast training step feeds it (fp32 residual stream on one side, bf16 on the other).
"""

from __future__ import annotations

import pytest
import torch
from op_helpers import DEVICES, tdev
from op_registry import OPS

AUTOCAST_DTYPES = [torch.bfloat16, torch.float16]
# "<op> <case>" -> builder(device) -> run() -> the outputs (and gradients) to compare.
CASES = {f"{op.name} {name}": build for op in OPS for name, build in op.autocast_cases.items()}


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


def test_every_op_has_autocast_cases():
    assert all(op.autocast_cases for op in OPS)
