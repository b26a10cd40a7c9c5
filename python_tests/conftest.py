"""Shared fixtures and helpers for the mta_ext test-suite."""

from __future__ import annotations

import pytest
import torch

# Tolerances for low-precision inputs compared with a float64 reference. Outputs of bf16 have
# 8 mantissa bits (rel. step 2**-8 ~ 3.9e-3); accumulation is fp32, so the error is dominated by
# the input/output rounding, a few ulps.
LOW_PRECISION_TOL = {
    torch.float16: dict(atol=2e-3, rtol=2e-3),
    torch.bfloat16: dict(atol=1.6e-2, rtol=1.6e-2),
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.float64: dict(atol=1e-12, rtol=1e-12),
}

CUDA = torch.cuda.is_available()
DEVICES = ["cpu"] + (["cuda"] if CUDA else [])


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


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)
