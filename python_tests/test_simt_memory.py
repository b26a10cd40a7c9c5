"""Host metadata that lies must not make a CUDA kernel read or write outside its buffers, and
must not pass unnoticed: the loss and gradients become NaN (no host sync; the debug mode
rejects such metadata with an error instead). On the SIMT backend, whose kernels run on the
CPU: tools/simt_asan.sh runs this file under AddressSanitizer (an out-of-bounds access aborts
the run); the plain test build checks the results."""

from __future__ import annotations

import pytest
import torch
from op_helpers import SIMT

from mta_ext import _simt
from mta_ext._layout import relational_plan_sizes

ops = torch.ops.mta_ext
pytestmark = pytest.mark.skipif(not SIMT, reason="needs the SIMT backend (MTA_WITH_SIMT=ON)")

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


def _units(n: int, dtype: torch.dtype, ds: int = 8, dt: int = 6):
    g = torch.Generator().manual_seed(n)
    return (
        torch.randn(n, ds, generator=g).to(dtype),
        torch.randn(n, dt, generator=g).to(dtype),
        torch.rand(n, generator=g),
    )


# (cu_units, plan_sizes): plan sizes that do not describe cu_units.
WRONG_PLANS = [
    ([0, 64], [1, 1, 4, 2]),  # E holds 4 of the 4096 entries the example needs
    ([0, 2], [2, 1, 4, 2]),  # one tile more than the plan has rows for
    ([0, 130], [0, 0, 0, 0]),  # nothing allocated for a three-tile example
    ([0, 70, 140], [4, 3, 4900, 140]),  # the first example fits, the second does not
    ([0, 70, 140], [6, 4, 9800, 281]),  # everything fits, one radial slot too many
    ([0, 3, 2, 9], [3, 3, 22, 6]),  # cu_units decreasing, sizes consistent with it
]


def _all_nan(*ts: torch.Tensor) -> bool:
    return all(bool(torch.isnan(t).all()) for t in ts)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cu,sizes", WRONG_PLANS, ids=str)
def test_relational_loss_wrong_plan_sizes_give_nan_in_bounds(cu, sizes, dtype):
    us, ut, w = _units(max(cu), dtype)
    cu_t = torch.tensor(cu)
    with _simt.enabled():
        loss = ops.relational_loss(us, ut, w, cu_t, plan_sizes=sizes)
        fused = ops.relational_loss_and_grad(us, ut, w, cu_t, True, True, plan_sizes=sizes)
        grads = ops.relational_loss_backward(
            torch.ones(()), us, ut, w, cu_t, True, True, plan_sizes=sizes
        )
    assert _all_nan(loss, *fused, *grads)


@pytest.mark.parametrize("cu", [[0, 64], [0, 2], [0, 130], [0, 70, 140], [0, 1, 67, 70, 200]])
def test_relational_loss_right_plan_sizes_give_finite_results(cu):
    us, ut, w = _units(cu[-1], torch.float32)
    cu_t = torch.tensor(cu)
    sizes = list(relational_plan_sizes(cu))
    with _simt.enabled():
        loss = ops.relational_loss(us, ut, w, cu_t, plan_sizes=sizes)
        fused = ops.relational_loss_and_grad(us, ut, w, cu_t, True, True, plan_sizes=sizes)
    ref = ops.relational_loss(us, ut, w, cu_t)  # the CPU kernel
    assert all(bool(torch.isfinite(t).all()) for t in (loss, *fused))
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("d", [7, 64])
def test_segment_pool_ranges_outside_rows_stay_in_bounds(dtype, d):
    # Unvalidated ranges (a raw-op caller on a device, outside the debug mode) are clamped into
    # [0, M]: in bounds, and the same as pooling the clamped ranges.
    h = torch.randn(10, d).to(dtype)
    bad = torch.tensor([[-5, 3], [8, 40], [7, 2], [12, 30], [0, 10]])
    clamped = torch.tensor([[0, 3], [8, 10], [7, 7], [10, 10], [0, 10]])  # 15 incidences
    g = torch.randn(5, d).to(dtype)
    with _simt.enabled():
        out = ops.segment_pool(h, bad, None)
        want = ops.segment_pool(h, clamped, None)
        gh = ops.segment_pool_backward(g, bad, None, 10, num_incidences=15)
        gh_want = ops.segment_pool_backward(g, clamped, None, 10, num_incidences=15)
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    torch.testing.assert_close(gh, gh_want, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("delta", [-7, -1, 1, 50])
def test_segment_pool_wrong_num_incidences_gives_nan(dtype, delta):
    r = torch.tensor([[0, 10], [5, 20], [19, 30], [3, 3]])  # 10 + 15 + 11 = 36 incidences
    g = torch.randn(4, 16).to(dtype)
    with _simt.enabled():
        right = ops.segment_pool_backward(g, r, None, 30, num_incidences=36)
        wrong = ops.segment_pool_backward(g, r, None, 30, num_incidences=36 + delta)
    assert torch.isfinite(right).all()
    assert _all_nan(wrong)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("d", [7, 64])
def test_row_cosine_rows_outside_h_give_nan_in_bounds(dtype, d):
    """row_cosine's rows are device data the default path never validates: the rows they name
    outside [0, M) read nothing and give NaN outputs and gradients, every other row is exact."""
    g = torch.Generator().manual_seed(d)
    p, h = torch.randn(5, d, generator=g).to(dtype), torch.randn(6, d, generator=g).to(dtype)
    bad = torch.tensor([0, 6, 3, -2, 1 << 40])
    good = torch.tensor([0, 1, 3, 1, 2])
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    grad = torch.randn(5, generator=g).to(acc)
    with _simt.enabled():
        out = ops.row_cosine(p, h, bad, 1e-5)
        want = ops.row_cosine(p, h, good, 1e-5)
        gp, gh = ops.row_cosine_backward(grad, p, h, bad, *out[1:], out[0], 1e-5, [True, True])
    ok, wrong = torch.tensor([0, 2]), torch.tensor([1, 3, 4])
    for a, b in zip(out, want, strict=True):
        assert torch.isnan(a[wrong]).all()
        torch.testing.assert_close(a[ok], b[ok], rtol=0, atol=0)
    assert torch.isnan(gp[wrong]).all() and torch.isnan(gh[wrong]).all()
    assert torch.isfinite(gp[ok]).all() and torch.isfinite(gh[ok]).all()
