"""segment_pool on every device of DEVICES: exactness vs the reference, gradients, opcheck,
determinism, bad input.

Inputs: ``op_registry.segment_pool_sample_inputs`` (opcheck, gradcheck) and the builders of
op_helpers (ragged / empty / overlapping ranges, misaligned and strided layouts), all seeded
by the ``rng`` fixture (fresh seed per run, printed; MTA_TEST_SEED replays). CUDA outputs are
NaN-poisoned: an element no kernel wrote shows up as NaN.
"""

from __future__ import annotations

import pytest
import torch
from op_helpers import (
    DEVICES,
    FLOATS,
    GPU_DEVICES,
    LOW_PRECISION_TOL,
    _finite,
    _misaligned,
    _ranges,
    _tol,
    cpu_kernels,
    ops,
    tdev,
    value_checks_on,
)
from op_registry import segment_pool_sample_inputs

import mta_ext
from mta_ext import reference

pytestmark = pytest.mark.usefixtures("poison_outputs")

SHAPES = [  # (M rows, N units, D)
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
# Small shapes of every kind, float64 only: (M, N, D).
SHAPES_FP64 = [
    (0, 0, 4),
    (5, 0, 1),
    (0, 2, 3),  # units over an empty sequence: all empty
    (1, 1, 1),
    (7, 5, 3),
    (64, 40, 17),
    (300, 120, 96),
    (50, 20, 576),
]
CASES = [
    (dtype, shape, weighted, layout)
    for dtype in FLOATS
    for shape in SHAPES
    for weighted in (False, True)
    for layout in ("contiguous", "misaligned", "strided")
] + [(torch.float64, shape, w, "contiguous") for shape in SHAPES_FP64 for w in (False, True)]


def _inputs(rng, m, n, d, dtype, device, *, weighted=True, max_len=6, weights_dtype=None):
    """``(hidden [M, D] dtype, ranges [N, 2] int64, weights [M] | None)`` on ``device``:
    ragged, overlapping, some empty ranges; some zero weights (units at the 1e-5 floor)."""
    h = torch.randn(m, d, dtype=torch.float64).to(dtype)
    r = _ranges(rng, m, n, max_len=max_len)
    w = None
    if weighted:
        w = torch.rand(m, dtype=torch.float64)
        w[torch.rand(m) < 0.2] = 0.0
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        w = w.to(weights_dtype or acc).to(tdev(device))
    return h.to(tdev(device)), r.to(tdev(device)), w


# ------------------------------------------------------------------ correctness


@pytest.mark.parametrize("device", DEVICES)
def test_forward_known_values(device):
    dev = tdev(device)
    hidden = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], device=dev)
    ranges = torch.tensor([[0, 2], [1, 3], [2, 2], [0, 3]], device=dev)
    weights = torch.tensor([1.0, 3.0, 0.0], device=dev)
    out = mta_ext.segment_pool(hidden, ranges, weights)
    expected = torch.tensor([[2.5, 3.5], [3.0, 4.0], [0.0, 0.0], [2.5, 3.5]])
    torch.testing.assert_close(out.cpu(), expected)
    # unweighted: plain mean; an all-zero-weight unit gives zeros (denominator clamped at 1e-5)
    torch.testing.assert_close(
        mta_ext.segment_pool(hidden, ranges).cpu(),
        torch.tensor([[2.0, 3.0], [4.0, 5.0], [0, 0], [3, 4.0]]),
    )
    zero = mta_ext.segment_pool(hidden, torch.tensor([[2, 3]], device=dev), weights)
    torch.testing.assert_close(zero.cpu(), torch.zeros(1, 2))


@pytest.mark.parametrize("case", CASES, ids=lambda c: str(c).replace("torch.", ""))
@pytest.mark.parametrize("device", DEVICES)
def test_matches_reference(rng, case, device):
    """Forward and backward vs autograd through the float64 reference."""
    dtype, (m, n, d), weighted, layout = case
    h, r, w = _inputs(rng, m, n, d, dtype, "cpu", weighted=weighted, max_len=9)
    hd = h.to(tdev(device))
    if layout == "misaligned":
        hd = _misaligned(hd)
    elif layout == "strided":
        hd = torch.cat([hd, hd], dim=1)[:, :d] if d else hd
    hd.requires_grad_(True)
    wd = None if w is None else w.to(tdev(device))
    out = mta_ext.segment_pool(hd, r.to(tdev(device)), wd)
    ref = reference.segment_pool(h.to(torch.float64), r, None if w is None else w.double())
    assert out.shape == (n, d) and out.dtype == dtype
    _finite(out)
    # float64: the tighter of the kernel table and the exact-fp64 bound (1e-12, 1e-12).
    tol = _tol(dtype) if dtype != torch.float64 else {"rtol": 1e-12, "atol": 1e-12}
    torch.testing.assert_close(out.cpu().double(), ref, **tol)
    go = torch.randn(n, d, dtype=torch.float64).to(dtype).double()  # representable in dtype
    (gh,) = torch.autograd.grad(out, hd, go.to(tdev(device)).to(dtype), allow_unused=True)
    hr = h.double().requires_grad_(True)
    (gr,) = torch.autograd.grad(
        reference.segment_pool(hr, r, None if w is None else w.double()),
        hr,
        go,
        allow_unused=True,
    )
    gr = torch.zeros_like(hr) if gr is None else gr
    gh = torch.zeros_like(hd) if gh is None else gh
    _finite(gh)
    torch.testing.assert_close(gh.cpu().double(), gr, **_tol(dtype))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("m,n,d", [(64, 40, 17), (300, 120, 96), (40, 30, 576)])
def test_low_precision_vs_fp64(rng, m, n, d, dtype, device):
    """Low-precision forward and backward vs float64 on the same rounded inputs."""
    hidden, ranges, weights = _inputs(rng, m, n, d, dtype, device, weights_dtype=torch.float64)
    out = mta_ext.segment_pool(hidden, ranges, weights)
    assert out.dtype == dtype
    ref = reference.segment_pool(hidden.double(), ranges, weights)
    torch.testing.assert_close(out.double(), ref, **LOW_PRECISION_TOL[dtype])
    h = hidden.detach().requires_grad_()
    g = torch.randn(n, d, dtype=torch.float64).to(tdev(device))
    mta_ext.segment_pool(h, ranges, weights).backward(g.to(dtype))
    hd = hidden.double().detach().requires_grad_()
    reference.segment_pool(hd, ranges, weights).backward(g)
    torch.testing.assert_close(h.grad.double(), hd.grad, **LOW_PRECISION_TOL[dtype])


@pytest.mark.parametrize("device", DEVICES)
def test_int32_ranges_and_noncontiguous_inputs(rng, device):
    dev = tdev(device)
    base = torch.randn(40, 24, dtype=torch.float64, device=dev)
    hidden = base[::2, ::2]  # non-contiguous view, [20, 12]
    assert not hidden.is_contiguous()
    ranges = _ranges(rng, 20, 15, max_len=6).to(torch.int32).to(dev)
    ranges_t = torch.stack([ranges[:, 0], ranges[:, 1]], 0).t()  # non-contiguous ranges
    weights = torch.rand(40, dtype=torch.float64, device=dev)[::2]
    out = mta_ext.segment_pool(hidden, ranges_t, weights)
    ref = reference.segment_pool(hidden.contiguous(), ranges.long(), weights.contiguous())
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_backward_matches_reference(rng, device):
    hidden, ranges, weights = _inputs(rng, 200, 90, 33, torch.float64, device)
    g = torch.randn(90, 33, dtype=torch.float64).to(tdev(device))
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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("device", GPU_DEVICES)
def test_cuda_kernels_match_cpu_kernels(rng, dtype, device):
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


# ------------------------------------------------------------------ gradients, opcheck


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck(rng, device):
    """gradcheck and gradgradcheck in float64 on every sample (weighted and unweighted)."""
    for s in segment_pool_sample_inputs(device, torch.float64):
        h, r, w = s.args

        def fn(x, r=r, w=w):
            return mta_ext.segment_pool(x, r, w)

        assert torch.autograd.gradcheck(fn, (h,)), s.desc
        assert torch.autograd.gradgradcheck(fn, (h,)), s.desc


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(rng, device):
    """The schema, fake kernel and autograd registration of the forward and the backward."""
    for s in segment_pool_sample_inputs(device, torch.float32):
        h, r, w = s.args
        torch.library.opcheck(ops.segment_pool.default, (h, r, w))
        g = torch.randn(r.shape[0], h.shape[1], device=h.device)
        torch.library.opcheck(ops.segment_pool_backward.default, (g, r, w, h.shape[0]))


def test_torch_compile_fullgraph(rng):
    hidden, ranges, weights = _inputs(rng, 50, 20, 16, torch.float32, "cpu")

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


@pytest.mark.parametrize("device", DEVICES)
def test_weights_get_no_gradient(rng, device):
    hidden, ranges, weights = _inputs(rng, 10, 5, 4, torch.float64, device)
    w = weights.clone().requires_grad_()
    h = hidden.clone().requires_grad_()
    mta_ext.segment_pool(h, ranges, w).sum().backward()
    assert h.grad is not None and w.grad is None


# ------------------------------------------------------------------ determinism


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("device", DEVICES)
def test_bit_identical_repeats(rng, dtype, device):
    """Forward and backward (autograd and the raw backward op) give the same bits on every
    repeat, with heavily overlapping ranges (no atomics)."""
    dev = tdev(device)
    # (M, N, D, max range length, weights dtype): every token sits in several units.
    for m, n, d, max_len, wdt in ((512, 600, 64, 40, torch.float64), (2048, 1500, 256, 64, None)):
        h = torch.randn(m, d, device=dev).to(dtype)
        r = _ranges(rng, m, n, max_len=max_len).to(dev)
        w = torch.rand(m, device=dev, dtype=wdt)
        g = torch.randn(n, d, device=dev).to(dtype)
        out = ops.segment_pool(h, r, w)
        assert torch.equal(ops.segment_pool(h, r, w), out)
        first = ops.segment_pool_backward(g, r, w, m)
        for _ in range(3):
            assert torch.equal(ops.segment_pool_backward(g, r, w, m), first)
        grads = []
        for _ in range(3):
            x = h.clone().requires_grad_()
            mta_ext.segment_pool(x, r, w).backward(g)
            grads.append(x.grad)
        assert all(torch.equal(grads[0], x) for x in grads[1:])


# ------------------------------------------------------------------ bad input


def _bad_cases(device: str):
    dev = tdev(device)
    H = torch.randn(6, 3, device=dev)
    R = torch.tensor([[0, 2], [3, 6]], device=dev)
    W = torch.rand(6, device=dev)

    def t(x):
        return torch.tensor(x, device=dev)

    cases = [
        ((H.long(), R, W), TypeError, "hidden must be float"),
        ((H[0], R, W), ValueError, r"hidden must have shape \[M, D\]"),
        ((H, R.float(), W), TypeError, "ranges must be an int64 or int32"),
        ((H, R[:, :1], W), ValueError, r"ranges must have shape \[N, 2\]"),
        ((H, R.reshape(-1), W), ValueError, r"ranges must have shape \[N, 2\]"),
        ((H, t([[0, 7]]), W), ValueError, r"ranges\[0\] = \(0, 7\).*hidden.size\(0\) = 6"),
        ((H, t([[0, 1], [-1, 2]]), W), ValueError, r"ranges\[1\] = \(-1, 2\)"),
        ((H, t([[0, 1], [1, 2], [4, 3]]), W), ValueError, r"ranges\[2\] = \(4, 3\)"),
        ((H, R, W[:5]), ValueError, "weights must have one entry per row of hidden"),
        ((H, R, W[:, None]), ValueError, r"weights must have shape \[M\]"),
        ((H, R, W.long()), TypeError, "weights must be float"),
        ((H, R, t([1.0, 1, -1, 1, 1, 1])), ValueError, r"weights\[2\] = -1"),
        ((H, R, t([1.0, 1, 1, float("nan"), 1, 1])), ValueError, r"weights\[3\] = nan"),
        ((H, R, t([1.0, float("inf"), 1, 1, 1, 1])), ValueError, r"weights\[1\] = inf"),
        ((H, R.to("meta"), W), ValueError, f"ranges is on meta but hidden is on {dev}"),
        ((H, R, W.to("meta")), ValueError, f"weights is on meta but hidden is on {dev}"),
    ]
    if dev != "cpu":
        cases.append(((H, R.cpu(), W), ValueError, "device"))
    return cases


@pytest.mark.parametrize("device", DEVICES)
def test_bad_input(device):
    """Metadata checks always; value checks (ranges, weights) on CPU tensors always and on a
    device in the debug mode (no host sync otherwise)."""
    with value_checks_on(device):
        for args, exc, match in _bad_cases(device):
            with pytest.raises(exc, match=match):
                mta_ext.segment_pool(*args)


@pytest.mark.parametrize("device", DEVICES)
def test_backward_bad_input(device):
    dev = tdev(device)
    R = torch.tensor([[0, 2], [3, 6]], device=dev)
    with value_checks_on(device):
        with pytest.raises(ValueError, match="grad_out has 3 rows but ranges has 2 units"):
            ops.segment_pool_backward(torch.randn(3, 2, device=dev), R, None, 6)
        with pytest.raises(ValueError, match=r"ranges\[1\] = \(3, 6\).*num_rows = 5"):
            ops.segment_pool_backward(torch.randn(2, 2, device=dev), R, None, 5)
