"""row_cosine on every device of DEVICES: exactness vs the reference, gradients, opcheck,
determinism, bad input (rows outside h on the device: test_simt_memory.py, run under ASan).

Inputs: one builder, ``op_registry.row_cosine_inputs`` (rows absent / distinct / repeated, zero
and tiny rows in the clamped branch), for the shape sweeps here (plus strided layouts) and for
``row_cosine_sample_inputs`` (opcheck, gradcheck); seeded by the ``rng`` fixture (fresh seed
per run, printed; MTA_TEST_SEED replays). CUDA outputs are NaN-poisoned: an element no kernel
wrote shows up as NaN.
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
    _tol,
    cpu_kernels,
    ops,
    tdev,
    value_checks_on,
)
from op_registry import row_cosine_inputs, row_cosine_sample_inputs

import mta_ext
from mta_ext import reference

pytestmark = pytest.mark.usefixtures("poison_outputs")

SHAPES = [(0, 3, 4), (1, 1, 1), (5, 5, 0), (17, 23, 7), (64, 80, 33), (300, 400, 1600)]
CASES = [
    (dtype, shape, rows, layout)
    for dtype in FLOATS
    for shape in SHAPES
    for rows in (None, "perm", "repeat")
    for layout in ("contiguous", "strided")
]


def _strided(x: torch.Tensor) -> torch.Tensor:
    """The same values with a row stride of 2 D (a non-contiguous view)."""
    return torch.cat([x, x], dim=1)[:, : x.shape[1]] if x.shape[1] else x


def _grad_err(got: torch.Tensor, want: torch.Tensor, bound: torch.Tensor, dtype) -> float:
    """The largest gradient error per row relative to that row's bound; float16 gradients below
    2^-14 are subnormal (absolute steps of 2^-24), which the error may use up first."""
    atol = 2.0**-24 if dtype == torch.float16 else 0.0
    diff = ((got.double() - want).abs() - atol).clamp_min(0)
    return (diff / bound.clamp_min(1e-300)[:, None]).max().item()


# ------------------------------------------------------------------ correctness


@pytest.mark.parametrize("device", DEVICES)
def test_forward_known_values(device):
    dev = tdev(device)
    p = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [3.0, 4.0]], device=dev)
    h = torch.tensor([[0.0, 2.0], [2.0, 2.0], [1.0, 0.0], [-3.0, -4.0]], device=dev)
    torch.testing.assert_close(mta_ext.row_cosine(p, h).cpu(), torch.tensor([0.0, 1.0, 0.0, -1.0]))
    rows = torch.tensor([2, 1, 1, 2], device=dev)
    torch.testing.assert_close(
        mta_ext.row_cosine(p, h, rows).cpu(), torch.tensor([1.0, 1.0, 0.0, 0.6])
    )
    # matches F.cosine_similarity with the same eps
    a, b = torch.randn(9, 5, device=dev), torch.randn(9, 5, device=dev)
    torch.testing.assert_close(
        mta_ext.row_cosine(a, b), torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-5)
    )


@pytest.mark.parametrize("case", CASES, ids=lambda c: str(c).replace("torch.", ""))
@pytest.mark.parametrize("device", DEVICES)
def test_matches_reference(rng, case, device):
    """Forward and both input gradients vs autograd through the float64 reference."""
    dtype, (n, m, d), rows_kind, layout = case
    p, h, rows = row_cosine_inputs(n, m, d, dtype, rows_kind)
    dev = tdev(device)
    pd, hd = p.to(dev), h.to(dev)
    if layout == "strided":
        pd, hd = _strided(pd), _strided(hd)
    pd.requires_grad_(True)
    hd.requires_grad_(True)
    rd = None if rows is None else rows.to(dev)
    out = mta_ext.row_cosine(pd, hd, rd)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    assert out.shape == (n,) and out.dtype == acc
    _finite(out)
    pr, hr = p.double().requires_grad_(True), h.double().requires_grad_(True)
    ref = reference.row_cosine(pr, hr, rows)
    tol = _tol(dtype) if dtype != torch.float64 else {"rtol": 1e-12, "atol": 1e-12}
    torch.testing.assert_close(out.cpu().double(), ref.detach(), **tol)
    if n == 0 or d == 0:
        return
    g = torch.randn(n, dtype=torch.float64)
    gp, gh = torch.autograd.grad(out, (pd, hd), g.to(dev).to(acc))
    tp, th = torch.autograd.grad(ref, (pr, hr), g)
    _finite(gp, gh)
    assert gp.dtype == dtype and gh.dtype == dtype
    # per row, relative to the bound |d cos/d p_i| <= 2 |g_i| / max(|p_i|, eps) (and for h's
    # rows the sum of those of the p rows that read it): a D = 1 gradient is 0 up to rounding
    hr = h.double() if rows is None else h.double()[rows]
    bound_p = 2 * g.abs() / p.double().norm(dim=-1).clamp_min(1e-5)
    bound_h = torch.zeros(h.shape[0], dtype=torch.float64).index_add_(
        0,
        torch.arange(n) if rows is None else rows,
        2 * g.abs() / hr.norm(dim=-1).clamp_min(1e-5),
    )
    limit = _tol(dtype)["rtol"] * 4 if dtype != torch.float64 else 1e-13
    assert _grad_err(gp.cpu(), tp, bound_p, dtype) <= limit
    assert _grad_err(gh.cpu(), th, bound_h, dtype) <= limit


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_vs_fp64(rng, dtype, device):
    """Low-precision forward and backward vs float64 on the same rounded inputs."""
    p, h, rows = row_cosine_inputs(200, 260, 96, dtype, "perm")
    dev = tdev(device)
    x = p.to(dev).clone().requires_grad_()
    out = mta_ext.row_cosine(x, h.to(dev), rows.to(dev))
    ref = reference.row_cosine(p.double(), h.double(), rows)
    torch.testing.assert_close(out.double().cpu(), ref, **LOW_PRECISION_TOL[torch.float32])
    g = torch.randn(200, dtype=torch.float64)
    out.backward(g.to(dev).float())
    xd = p.detach().double().requires_grad_()
    reference.row_cosine(xd, h.double(), rows).backward(g)
    bound = 2 * g.abs() / p.double().norm(dim=-1).clamp_min(1e-5)
    assert _grad_err(x.grad.cpu(), xd.grad, bound, dtype) <= LOW_PRECISION_TOL[dtype]["rtol"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("device", GPU_DEVICES)
def test_cuda_kernels_match_cpu_kernels(rng, dtype, device):
    p, h, rows = row_cosine_inputs(300, 400, 200, dtype, "repeat")
    g = torch.randn(300).to(torch.float64 if dtype == torch.float64 else torch.float32)
    with cpu_kernels():
        cpu = ops.row_cosine(p, h, rows, 1e-5)
        cpu_b = ops.row_cosine_backward(g, p, h, rows, *cpu[1:], cpu[0], 1e-5, [True, True])
    dev = tdev(device)
    gpu = ops.row_cosine(p.to(dev), h.to(dev), rows.to(dev), 1e-5)
    gpu_b = ops.row_cosine_backward(
        g.to(dev), p.to(dev), h.to(dev), rows.to(dev), *gpu[1:], gpu[0], 1e-5, [True, True]
    )
    # both devices sum in float64 (different orders): float32 outputs agree to about one
    # rounding; float64 outputs to the sums' rounding (about D ulps)
    tol = dict(rtol=1e-13, atol=1e-15) if dtype == torch.float64 else dict(rtol=2.5e-7, atol=6e-8)
    for a, b in zip(gpu, cpu, strict=True):
        torch.testing.assert_close(a.cpu(), b, **tol)
    for a, b in zip(gpu_b, cpu_b, strict=True):
        torch.testing.assert_close(a.cpu().double(), b.double(), **_tol(dtype))


# ------------------------------------------------------------------ gradients, opcheck


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck(rng, device):
    """gradcheck in float64 on every sample, zero and tiny rows (the clamped branch) included.
    The backward is not itself differentiable (first-order use only, as the loss needs)."""
    for s in row_cosine_sample_inputs(device, torch.float64):
        p, h, rows, eps = s.args
        if p.numel() == 0:
            continue
        p0 = p.detach().clone()
        if p0.shape[0] >= 2:
            p0[1] = p0[1].sign() * 1e-3  # gradcheck's finite step must not cross eps
            p0[0] = 0.0

        def fn(a, b, rows=rows, eps=eps):
            return mta_ext.row_cosine(a, b, rows, eps=eps)

        assert torch.autograd.gradcheck(fn, (p.detach().requires_grad_(), h)), s.desc
        assert torch.autograd.gradcheck(
            lambda b, p0=p0, rows=rows: mta_ext.row_cosine(p0, b, rows), (h,)
        ), s.desc


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(rng, device):
    """The schema, fake kernel and autograd registration of the forward and the backward."""
    for s in row_cosine_sample_inputs(device, torch.float32):
        p, h, rows, eps = s.args
        torch.library.opcheck(ops.row_cosine.default, (p, h, rows, eps))
        c, n_p, n_h = ops.row_cosine(p.detach(), h.detach(), rows, eps)
        g = torch.randn_like(c)
        for mask in ([True, True], [True, False], [False, True]):
            torch.library.opcheck(
                ops.row_cosine_backward.default,
                (g, p.detach(), h.detach(), rows, n_p, n_h, c, eps, mask),
            )


def test_torch_compile_fullgraph(rng):
    p, h, rows = row_cosine_inputs(40, 50, 16, torch.float32, "perm")

    def f(a, b, r):
        return (1 - mta_ext.row_cosine(a * 2, b, r)).square().sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    x1, x2 = p.clone().requires_grad_(), p.clone().requires_grad_()
    out1, out2 = compiled(x1, h, rows), f(x2, h, rows)
    torch.testing.assert_close(out1, out2)
    out1.backward()
    out2.backward()
    torch.testing.assert_close(x1.grad, x2.grad)


# ------------------------------------------------------------------ determinism


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("device", DEVICES)
def test_bit_identical_repeats(rng, dtype, device):
    """Forward and backward give the same bits on every repeat, also for repeated rows (whose
    h gradients accumulate)."""
    dev = tdev(device)
    p, h, rows = row_cosine_inputs(700, 300, 130, dtype, "repeat")
    p, h, rows = p.to(dev), h.to(dev), rows.to(dev)
    g = torch.randn(700, device=dev)
    runs = []
    for _ in range(3):
        a, b = p.clone().requires_grad_(), h.clone().requires_grad_()
        out = mta_ext.row_cosine(a, b, rows)
        out.backward(g.to(out.dtype))
        runs.append((out.detach(), a.grad, b.grad))
    for r in runs[1:]:
        assert all(torch.equal(x, y) for x, y in zip(r, runs[0], strict=True))


# ------------------------------------------------------------------ bad input


def _bad_cases(device: str):
    dev = tdev(device)
    P, H = torch.randn(4, 3, device=dev), torch.randn(6, 3, device=dev)
    R = torch.tensor([0, 2, 5, 1], device=dev)

    def t(x):
        return torch.tensor(x, device=dev)

    cases = [
        ((P.long(), H, R), TypeError, "row_cosine: p must be float"),
        ((P, H.double(), R), TypeError, r"row_cosine: h must have the dtype of p \(Float\)"),
        ((P[0], H, R), ValueError, r"p must have shape \[n, D\]"),
        ((P, H[0], R), ValueError, r"h must have shape \[M, D\]"),
        ((P, H[:, :2], R), ValueError, r"h must have the width of p \(D = 3\)"),
        ((P, H, R.float()), TypeError, "rows must be an int64 or int32"),
        ((P, H, R[:3]), ValueError, r"rows must have one entry per row of p \(4\), got 3"),
        ((P, H, R[None]), ValueError, r"rows must have shape \[n\]"),
        ((P, H, t([0, 6, 1, 2])), ValueError, r"rows\[1\] = 6 is out of range.*h.size\(0\) = 6"),
        ((P, H, t([0, 1, -1, 2])), ValueError, r"rows\[2\] = -1 is out of range"),
        ((P, H, None), ValueError, r"without rows, h must have one row per row of p \(4\)"),
        ((P, H, R.to("meta")), ValueError, f"rows is on meta but p is on {dev}"),
        ((P, H.to("meta"), R), ValueError, f"h is on meta but p is on {dev}"),
    ]
    if dev != "cpu":
        cases.append(((P, H, R.cpu()), ValueError, "device"))
    return cases


@pytest.mark.parametrize("device", DEVICES)
def test_bad_input(device):
    """Metadata checks always; the rows value check on CPU tensors always and on a device in
    the debug mode (no host sync otherwise)."""
    with value_checks_on(device):
        for args, exc, match in _bad_cases(device):
            with pytest.raises(exc, match=match):
                mta_ext.row_cosine(*args)
        P = torch.randn(4, 3, device=tdev(device))
        for eps in (-1.0, float("nan"), float("inf")):
            with pytest.raises(ValueError, match="eps must be finite and >= 0"):
                mta_ext.row_cosine(P, P, eps=eps)


@pytest.mark.parametrize("device", DEVICES)
def test_backward_bad_input(device):
    dev = tdev(device)
    P, H = torch.randn(4, 3, device=dev), torch.randn(4, 3, device=dev)
    c, n_p, n_h = ops.row_cosine(P, H, None, 1e-5)
    with pytest.raises(ValueError, match=r"grad_cos must have one entry per row of p \(4\)"):
        ops.row_cosine_backward(c[:3], P, H, None, n_p, n_h, c, 1e-5, [True, False])
    with pytest.raises(ValueError, match=r"norm_h must have shape \[n\]"):
        ops.row_cosine_backward(c, P, H, None, n_p, n_h[None], c, 1e-5, [True, False])
    with pytest.raises(TypeError, match="cos must be float"):
        ops.row_cosine_backward(c, P, H, None, n_p, n_h, c.long(), 1e-5, [True, False])
