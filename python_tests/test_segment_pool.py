"""segment_pool: exactness vs the reference, gradients, opcheck, determinism, bad input."""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICES, LOW_PRECISION_TOL, random_ranges

import mta_ext
from mta_ext import reference

SHAPES = [  # (M rows, D, N units)
    (0, 4, 0),
    (5, 1, 0),
    (0, 3, 2),  # units over an empty sequence: all empty
    (1, 1, 1),
    (7, 3, 5),
    (64, 17, 40),
    (300, 96, 120),
    (50, 576, 20),
]


def _inputs(m, d, n, dtype, gen, device="cpu", weighted=True):
    hidden = torch.randn(m, d, generator=gen, dtype=torch.float64).to(dtype).to(device)
    ranges = random_ranges(m, n, generator=gen).to(device)
    weights = torch.rand(m, generator=gen, dtype=torch.float64).to(device) if weighted else None
    return hidden, ranges, weights


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("m,d,n", SHAPES)
@pytest.mark.parametrize("weighted", [True, False])
def test_forward_matches_reference_fp64(m, d, n, weighted, device, gen):
    hidden, ranges, weights = _inputs(m, d, n, torch.float64, gen, device, weighted)
    out = mta_ext.segment_pool(hidden, ranges, weights)
    ref = reference.segment_pool(hidden, ranges, weights)
    assert out.shape == (n, d) and out.dtype == torch.float64
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-12)


def test_forward_known_values():
    hidden = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    ranges = torch.tensor([[0, 2], [1, 3], [2, 2], [0, 3]])
    weights = torch.tensor([1.0, 3.0, 0.0])
    out = mta_ext.segment_pool(hidden, ranges, weights)
    expected = torch.tensor([[2.5, 3.5], [3.0, 4.0], [0.0, 0.0], [2.5, 3.5]])
    torch.testing.assert_close(out, expected)
    # unweighted: plain mean; an all-zero-weight unit gives zeros (denominator clamped at 1e-5)
    torch.testing.assert_close(
        mta_ext.segment_pool(hidden, ranges),
        torch.tensor([[2.0, 3.0], [4.0, 5.0], [0, 0], [3, 4.0]]),
    )
    zero = mta_ext.segment_pool(hidden, torch.tensor([[2, 3]]), weights)
    torch.testing.assert_close(zero, torch.zeros(1, 2))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("m,d,n", [(64, 17, 40), (300, 96, 120), (40, 576, 30)])
def test_low_precision_vs_fp64(m, d, n, dtype, device, gen):
    hidden, ranges, weights = _inputs(m, d, n, dtype, gen, device)
    out = mta_ext.segment_pool(hidden, ranges, weights)
    assert out.dtype == dtype
    ref = reference.segment_pool(hidden.double(), ranges, weights)
    torch.testing.assert_close(out.double(), ref, **LOW_PRECISION_TOL[dtype])
    # backward in low precision against the fp64 gradient
    h = hidden.detach().requires_grad_()
    g = torch.randn(n, d, generator=gen, dtype=torch.float64).to(device)
    mta_ext.segment_pool(h, ranges, weights).backward(g.to(dtype))
    hd = hidden.double().detach().requires_grad_()
    reference.segment_pool(hd, ranges, weights).backward(g)
    torch.testing.assert_close(h.grad.double(), hd.grad, **LOW_PRECISION_TOL[dtype])


def test_int32_ranges_and_noncontiguous_inputs(gen):
    base = torch.randn(40, 24, generator=gen, dtype=torch.float64)
    hidden = base[::2, ::2]  # non-contiguous view, [20, 12]
    assert not hidden.is_contiguous()
    ranges = random_ranges(20, 15, generator=gen).to(torch.int32)
    ranges_t = torch.stack([ranges[:, 0], ranges[:, 1]], 0).t()  # non-contiguous ranges
    weights = torch.rand(40, generator=gen, dtype=torch.float64)[::2]
    out = mta_ext.segment_pool(hidden, ranges_t, weights)
    ref = reference.segment_pool(hidden.contiguous(), ranges.long(), weights.contiguous())
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("m,d,n", [(1, 1, 1), (9, 3, 6), (20, 5, 14), (6, 2, 0)])
@pytest.mark.parametrize("weighted", [True, False])
def test_gradcheck_fp64(m, d, n, weighted, device, gen):
    hidden, ranges, weights = _inputs(m, d, n, torch.float64, gen, device, weighted)
    hidden.requires_grad_()
    fn = lambda h: mta_ext.segment_pool(h, ranges, weights)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (hidden,))
    assert torch.autograd.gradgradcheck(fn, (hidden,))


@pytest.mark.parametrize("device", DEVICES)
def test_backward_matches_reference(device, gen):
    hidden, ranges, weights = _inputs(200, 33, 90, torch.float64, gen, device)
    g = torch.randn(90, 33, generator=gen, dtype=torch.float64).to(device)
    h1 = hidden.clone().requires_grad_()
    mta_ext.segment_pool(h1, ranges, weights).backward(g)
    h2 = hidden.clone().requires_grad_()
    reference.segment_pool(h2, ranges, weights).backward(g)
    torch.testing.assert_close(h1.grad, h2.grad, atol=1e-12, rtol=1e-12)
    # rows covered by no unit get exactly zero gradient
    covered = torch.zeros(200, dtype=torch.bool)
    for s, e in ranges.tolist():
        covered[s:e] = True
    assert torch.all(h1.grad.cpu()[~covered] == 0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_backward_is_deterministic_with_overlaps(dtype, device, gen):
    m, d, n = 512, 64, 600  # heavily overlapping ranges
    hidden, ranges, weights = _inputs(m, d, n, dtype, gen, device)
    ranges = random_ranges(m, n, generator=gen, max_len=40).to(device)
    g = torch.randn(n, d, generator=gen).to(dtype).to(device)
    grads = []
    for _ in range(3):
        h = hidden.clone().requires_grad_()
        mta_ext.segment_pool(h, ranges, weights).backward(g)
        grads.append(h.grad)
    assert all(torch.equal(grads[0], x) for x in grads[1:])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("weighted", [True, False])
def test_opcheck(weighted, device, gen):
    hidden, ranges, weights = _inputs(30, 8, 12, torch.float32, gen, device, weighted)
    torch.library.opcheck(
        torch.ops.mta_ext.segment_pool, (hidden.requires_grad_(), ranges, weights)
    )
    g = torch.randn(12, 8, generator=gen).to(device)
    torch.library.opcheck(torch.ops.mta_ext.segment_pool_backward, (g, ranges, weights, 30))


def test_torch_compile_fullgraph(gen):
    hidden, ranges, weights = _inputs(50, 16, 20, torch.float32, gen)

    def f(h, r, w):
        return mta_ext.segment_pool(h * 2, r, w).square().sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    h1 = hidden.clone().requires_grad_()
    h2 = hidden.clone().requires_grad_()
    out1 = compiled(h1, ranges, weights)
    out2 = f(h2, ranges, weights)
    torch.testing.assert_close(out1, out2)
    out1.backward()
    out2.backward()
    torch.testing.assert_close(h1.grad, h2.grad)


def test_weights_get_no_gradient(gen):
    hidden, ranges, weights = _inputs(10, 4, 5, torch.float64, gen)
    w = weights.clone().requires_grad_()
    h = hidden.clone().requires_grad_()
    mta_ext.segment_pool(h, ranges, w).sum().backward()
    assert h.grad is not None and w.grad is None


# ---------------------------------------------------------------- bad input
H = torch.randn(6, 3)
R = torch.tensor([[0, 2], [3, 6]])
W = torch.rand(6)


@pytest.mark.parametrize(
    "args,exc,match",
    [
        ((H.long(), R, W), TypeError, "hidden must be float"),
        ((H[0], R, W), ValueError, r"hidden must have shape \[M, D\]"),
        ((H, R.float(), W), TypeError, "ranges must be an int64 or int32"),
        ((H, R[:, :1], W), ValueError, r"ranges must have shape \[N, 2\]"),
        ((H, R.reshape(-1), W), ValueError, r"ranges must have shape \[N, 2\]"),
        (
            (H, torch.tensor([[0, 7]]), W),
            ValueError,
            r"ranges\[0\] = \(0, 7\).*hidden.size\(0\) = 6",
        ),
        ((H, torch.tensor([[0, 1], [-1, 2]]), W), ValueError, r"ranges\[1\] = \(-1, 2\)"),
        ((H, torch.tensor([[0, 1], [1, 2], [4, 3]]), W), ValueError, r"ranges\[2\] = \(4, 3\)"),
        ((H, R, torch.rand(5)), ValueError, "weights must have one entry per row of hidden"),
        ((H, R, torch.rand(6, 1)), ValueError, r"weights must have shape \[M\]"),
        ((H, R, torch.ones(6, dtype=torch.long)), TypeError, "weights must be float"),
        ((H, R, torch.tensor([1.0, 1, -1, 1, 1, 1])), ValueError, r"weights\[2\] = -1"),
        ((H, R, torch.tensor([1.0, 1, 1, float("nan"), 1, 1])), ValueError, r"weights\[3\] = nan"),
        ((H, R, torch.tensor([1.0, float("inf"), 1, 1, 1, 1])), ValueError, r"weights\[1\] = inf"),
        ((H, R.to("meta"), W), ValueError, "ranges is on meta but hidden is on cpu"),
        ((H, R, W.to("meta")), ValueError, "weights is on meta but hidden is on cpu"),
    ],
)
def test_bad_input(args, exc, match):
    with pytest.raises(exc, match=match):
        mta_ext.segment_pool(*args)


def test_backward_bad_input():
    with pytest.raises(ValueError, match="grad_out has 3 rows but ranges has 2 units"):
        torch.ops.mta_ext.segment_pool_backward(torch.randn(3, 2), R, None, 6)
    with pytest.raises(ValueError, match=r"ranges\[1\] = \(3, 6\).*num_rows = 5"):
        torch.ops.mta_ext.segment_pool_backward(torch.randn(2, 2), R, None, 5)
