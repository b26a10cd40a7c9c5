"""segment_pool: exactness vs the reference, gradients, opcheck, determinism, bad input."""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICES, GPU_DEVICES, LOW_PRECISION_TOL, cpu_kernels, random_ranges, tdev
from op_helpers import FLOATS, _finite, _misaligned, _ranges, _tol, ops, value_checks_on

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

# CUDA outputs NaN-poisoned: an element no kernel wrote shows up as NaN.
pytestmark = pytest.mark.usefixtures("poison_outputs")


def _inputs(m, d, n, dtype, gen, device="cpu", weighted=True):
    hidden = torch.randn(m, d, generator=gen, dtype=torch.float64).to(dtype).to(tdev(device))
    ranges = random_ranges(m, n, generator=gen).to(tdev(device))
    weights = (
        torch.rand(m, generator=gen, dtype=torch.float64).to(tdev(device)) if weighted else None
    )
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
    g = torch.randn(n, d, generator=gen, dtype=torch.float64).to(tdev(device))
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
    g = torch.randn(90, 33, generator=gen, dtype=torch.float64).to(tdev(device))
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
    ranges = random_ranges(m, n, generator=gen, max_len=40).to(tdev(device))
    g = torch.randn(n, d, generator=gen).to(dtype).to(tdev(device))
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
    g = torch.randn(12, 8, generator=gen).to(tdev(device))
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


# ------------------------------------------------------------------------------ every device
# Fresh random inputs each run (seed printed; MTA_TEST_SEED replays), outputs NaN-poisoned on
# CUDA, on each device of DEVICES (CPU always, CUDA when present): reference comparison on
# ragged / empty / overlapping / unaligned inputs, gradcheck, bit-identical backward, opcheck,
# bad input.


SP_SHAPES = [
    (0, 5, 3),
    (7, 0, 4),
    (5, 4, 0),
    (1, 1, 1),
    (33, 20, 7),
    (200, 90, 64),
    (300, 120, 1000),
    (64, 30, 4096),
    (513, 200, 136),
]


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape", SP_SHAPES)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("layout", ["contiguous", "misaligned", "strided"])
@pytest.mark.parametrize("device", DEVICES)
def test_segment_pool_matches_reference(rng, dtype, shape, weighted, layout, device):
    m, n, d = shape
    h = torch.randn(m, d, dtype=torch.float64).to(dtype)
    r = _ranges(rng, m, n, max_len=9)
    w = None
    if weighted:
        w = torch.rand(m, dtype=torch.float64)
        w[torch.rand(m) < 0.2] = 0.0  # zero weights: some units hit the 1e-5 floor
        w = w.to(torch.float32 if dtype != torch.float64 else dtype)
    hd = h.to(tdev(device))
    if layout == "misaligned":
        hd = _misaligned(hd)
    elif layout == "strided":
        hd = torch.cat([hd, hd], dim=1)[:, :d] if d else hd
    hd.requires_grad_(True)
    out = ops.segment_pool(hd, r.to(tdev(device)), None if w is None else w.to(tdev(device)))
    ref = reference.segment_pool(h.to(torch.float64), r, None if w is None else w.double())
    assert out.shape == (n, d) and out.dtype == dtype
    _finite(out)
    torch.testing.assert_close(out.cpu().double(), ref, **_tol(dtype))
    # Backward: the op's gradient vs autograd through the fp64 reference.
    go = torch.randn(n, d, dtype=torch.float64).to(dtype).double()  # representable in dtype
    (gh,) = torch.autograd.grad(out, hd, go.to(tdev(device)).to(dtype), allow_unused=True)
    hr = h.double().requires_grad_(True)
    (gr,) = torch.autograd.grad(
        reference.segment_pool(hr, r, None if w is None else w.double()),
        hr,
        go,
        allow_unused=True,
    )
    if gr is None:
        gr = torch.zeros_like(hr)
    if gh is None:
        gh = torch.zeros_like(hd)
    _finite(gh)
    torch.testing.assert_close(gh.cpu().double(), gr, **_tol(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("device", GPU_DEVICES)
def test_segment_pool_cuda_matches_cpu_kernel(rng, dtype, device):
    m, n, d = 400, 160, 200
    h = torch.randn(m, d).to(dtype)
    r = _ranges(rng, m, n, max_len=12)
    w = torch.rand(m)
    with cpu_kernels():
        cpu = ops.segment_pool(h, r, w)
    gpu = ops.segment_pool(h.to(tdev(device)), r.to(tdev(device)), w.to(tdev(device))).cpu()
    torch.testing.assert_close(gpu.double(), cpu.double(), **_tol(dtype))
    g = torch.randn(n, d).to(dtype)
    with cpu_kernels():
        cpu_b = ops.segment_pool_backward(g, r, w, m)
    gpu_b = ops.segment_pool_backward(
        g.to(tdev(device)), r.to(tdev(device)), w.to(tdev(device)), m
    ).cpu()
    torch.testing.assert_close(gpu_b.double(), cpu_b.double(), **_tol(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("device", DEVICES)
def test_segment_pool_backward_bit_identical(rng, dtype, device):
    m, n, d = 2048, 1500, 256
    # Deep, ragged overlap: every token sits in several units.
    r = _ranges(rng, m, n, max_len=64)
    w = torch.rand(m, device=tdev(device))
    g = torch.randn(n, d, device=tdev(device)).to(dtype)
    rd = r.to(tdev(device))
    first = ops.segment_pool_backward(g, rd, w, m)
    for _ in range(3):
        assert torch.equal(ops.segment_pool_backward(g, rd, w, m), first)
    h = torch.randn(m, d, device=tdev(device)).to(dtype)
    out = ops.segment_pool(h, rd, w)
    assert torch.equal(ops.segment_pool(h, rd, w), out)


@pytest.mark.parametrize("device", DEVICES)
def test_segment_pool_gradcheck_on_device(rng, device):
    m, n, d = 12, 7, 5
    h = torch.randn(m, d, dtype=torch.float64, device=tdev(device), requires_grad=True)
    r = _ranges(rng, m, n, max_len=5).to(tdev(device))
    w = torch.rand(m, dtype=torch.float64, device=tdev(device))
    assert torch.autograd.gradcheck(lambda x: ops.segment_pool(x, r, w), (h,))
    assert torch.autograd.gradgradcheck(lambda x: ops.segment_pool(x, r, w), (h,))
    assert torch.autograd.gradcheck(lambda x: ops.segment_pool(x, r, None), (h,))


@pytest.mark.parametrize("device", DEVICES)
def test_segment_pool_opcheck_on_device(rng, device):
    m, n, d = 20, 9, 6
    h = torch.randn(m, d, device=tdev(device), requires_grad=True)
    r = _ranges(rng, m, n, max_len=6).to(tdev(device))
    w = torch.rand(m, device=tdev(device))
    torch.library.opcheck(ops.segment_pool.default, (h, r, w))
    torch.library.opcheck(ops.segment_pool.default, (h, r, None))
    g = torch.randn(n, d, device=tdev(device))
    torch.library.opcheck(ops.segment_pool_backward.default, (g, r, w, m))


@pytest.mark.parametrize("device", DEVICES)
def test_segment_pool_bad_input_on_device(device):
    h = torch.randn(4, 3, device=tdev(device))
    # Value checks: on CPU always, on a device in the debug mode (no host sync otherwise).
    with value_checks_on(device):
        with pytest.raises(ValueError, match="ranges"):
            ops.segment_pool(h, torch.tensor([[0, 5]], device=tdev(device)), None)
        with pytest.raises(ValueError, match="ranges"):
            ops.segment_pool(h, torch.tensor([[3, 1]], device=tdev(device)), None)
        with pytest.raises(ValueError, match="weights"):
            ops.segment_pool(
                h, torch.tensor([[0, 2]], device=tdev(device)), -torch.ones(4, device=tdev(device))
            )
    if device == "cuda":
        with pytest.raises(ValueError, match="device"):
            ops.segment_pool(h, torch.tensor([[0, 2]]), None)
