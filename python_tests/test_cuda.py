"""CUDA kernels of every op vs the pure-PyTorch reference (skipped without a GPU).

Every run draws fresh random inputs (no fixed seed: the kernels must compute the same function on
any valid input; a failure prints the seed to replay it with MTA_TEST_SEED). Outputs are
poisoned (MTA_CUDA_POISON=1: the ops allocate them NaN-filled), so an element that no kernel
wrote shows up as NaN. Also: fp64 gradcheck on the device, bit-identical backward on repeated
runs, torch.library.opcheck, and bad input.

The first test needs no GPU: a CUDA build must register a CUDA kernel for every op.
"""

from __future__ import annotations

import os
import random

import pytest
import torch

import mta_ext
from mta_ext import reference

ops = torch.ops.mta_ext
# MTA_CUDA_TESTS_ON_CPU=1 runs this file against the CPU kernels: it checks the tests themselves
# (tolerances, reference use, input generators) on a machine without a GPU.
DEV = "cpu" if os.environ.get("MTA_CUDA_TESTS_ON_CPU") == "1" else "cuda"
HAS_GPU = DEV == "cpu" or torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA device")
ALL_OPS = [
    "segment_pool",
    "segment_pool_backward",
    "token_salience",
    "relational_loss",
    "relational_loss_and_grad",
    "relational_loss_backward",
]
FLOATS = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


def _has_op(name: str) -> bool:
    return hasattr(ops, name)


def _seed() -> int:
    s = int(os.environ.get("MTA_TEST_SEED", random.SystemRandom().randrange(2**31)))
    print(f"seed={s}")
    return s


@pytest.fixture()
def gen():
    s = _seed()
    random.seed(s)
    torch.manual_seed(s)
    return random.Random(s)


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    monkeypatch.setenv("MTA_CUDA_POISON", "1")


def _tol(dtype: torch.dtype) -> dict:
    return {
        torch.float64: {"rtol": 1e-10, "atol": 1e-12},
        torch.float32: {"rtol": 2e-5, "atol": 2e-6},
        torch.bfloat16: {"rtol": 1.6e-2, "atol": 1e-2},
        torch.float16: {"rtol": 2e-3, "atol": 1e-3},
    }[dtype]


def _finite(*ts: torch.Tensor) -> None:
    for t in ts:
        assert torch.isfinite(t).all(), "non-finite output element (unwritten or overflow)"


# ------------------------------------------------------------------------------ no GPU needed


def test_cuda_build_registers_every_op():
    info = mta_ext.build_info()
    if not info["cuda"]:
        pytest.skip("CPU-only build")
    # Every public op (the known ones and any new one) must have a CUDA kernel: a missing
    # registration is a failure, never a skip.
    registered = {
        n.split("::", 1)[1]
        for n in torch._C._dispatch_get_all_op_names()
        if n.startswith("mta_ext::") and not n.startswith("mta_ext::_")
    }
    assert set(ALL_OPS) <= registered, sorted(set(ALL_OPS) - registered)
    missing = [
        n
        for n in sorted(registered)
        if not torch._C._dispatch_has_kernel_for_dispatch_key(f"mta_ext::{n}", "CUDA")
    ]
    assert not missing, f"ops without a CUDA kernel: {missing}"


# ------------------------------------------------------------------------------ segment_pool


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


@needs_gpu
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape", SP_SHAPES)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("layout", ["contiguous", "misaligned", "strided"])
def test_segment_pool_matches_reference(gen, dtype, shape, weighted, layout):
    m, n, d = shape
    h = torch.randn(m, d, dtype=torch.float64).to(dtype)
    r = _ranges(gen, m, n, max_len=9)
    w = None
    if weighted:
        w = torch.rand(m, dtype=torch.float64)
        w[torch.rand(m) < 0.2] = 0.0  # zero weights: some units hit the 1e-5 floor
        w = w.to(torch.float32 if dtype != torch.float64 else dtype)
    hd = h.to(DEV)
    if layout == "misaligned":
        hd = _misaligned(hd)
    elif layout == "strided":
        hd = torch.cat([hd, hd], dim=1)[:, :d] if d else hd
    hd.requires_grad_(True)
    out = ops.segment_pool(hd, r.to(DEV), None if w is None else w.to(DEV))
    ref = reference.segment_pool(h.to(torch.float64), r, None if w is None else w.double())
    assert out.shape == (n, d) and out.dtype == dtype
    _finite(out)
    torch.testing.assert_close(out.cpu().double(), ref, **_tol(dtype))
    # Backward: the op's gradient vs autograd through the fp64 reference.
    go = torch.randn(n, d, dtype=torch.float64).to(dtype).double()  # representable in dtype
    (gh,) = torch.autograd.grad(out, hd, go.to(DEV).to(dtype), allow_unused=True)
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


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_segment_pool_cuda_matches_cpu_kernel(gen, dtype):
    m, n, d = 400, 160, 200
    h = torch.randn(m, d).to(dtype)
    r = _ranges(gen, m, n, max_len=12)
    w = torch.rand(m)
    cpu = ops.segment_pool(h, r, w)
    gpu = ops.segment_pool(h.to(DEV), r.to(DEV), w.to(DEV)).cpu()
    torch.testing.assert_close(gpu.double(), cpu.double(), **_tol(dtype))
    g = torch.randn(n, d).to(dtype)
    cpu_b = ops.segment_pool_backward(g, r, w, m)
    gpu_b = ops.segment_pool_backward(g.to(DEV), r.to(DEV), w.to(DEV), m).cpu()
    torch.testing.assert_close(gpu_b.double(), cpu_b.double(), **_tol(dtype))


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_segment_pool_backward_bit_identical(gen, dtype):
    m, n, d = 2048, 1500, 256
    # Deep, ragged overlap: every token sits in several units.
    r = _ranges(gen, m, n, max_len=64)
    w = torch.rand(m, device=DEV)
    g = torch.randn(n, d, device=DEV).to(dtype)
    rd = r.to(DEV)
    first = ops.segment_pool_backward(g, rd, w, m)
    for _ in range(3):
        assert torch.equal(ops.segment_pool_backward(g, rd, w, m), first)
    h = torch.randn(m, d, device=DEV).to(dtype)
    out = ops.segment_pool(h, rd, w)
    assert torch.equal(ops.segment_pool(h, rd, w), out)


@needs_gpu
def test_segment_pool_gradcheck_cuda(gen):
    m, n, d = 12, 7, 5
    h = torch.randn(m, d, dtype=torch.float64, device=DEV, requires_grad=True)
    r = _ranges(gen, m, n, max_len=5).to(DEV)
    w = torch.rand(m, dtype=torch.float64, device=DEV)
    assert torch.autograd.gradcheck(lambda x: ops.segment_pool(x, r, w), (h,))
    assert torch.autograd.gradgradcheck(lambda x: ops.segment_pool(x, r, w), (h,))
    assert torch.autograd.gradcheck(lambda x: ops.segment_pool(x, r, None), (h,))


@needs_gpu
def test_segment_pool_opcheck_cuda(gen):
    m, n, d = 20, 9, 6
    h = torch.randn(m, d, device=DEV, requires_grad=True)
    r = _ranges(gen, m, n, max_len=6).to(DEV)
    w = torch.rand(m, device=DEV)
    torch.library.opcheck(ops.segment_pool.default, (h, r, w))
    torch.library.opcheck(ops.segment_pool.default, (h, r, None))
    g = torch.randn(n, d, device=DEV)
    torch.library.opcheck(ops.segment_pool_backward.default, (g, r, w, m))


@needs_gpu
def test_segment_pool_bad_input_cuda():
    h = torch.randn(4, 3, device=DEV)
    with pytest.raises(ValueError, match="ranges"):
        ops.segment_pool(h, torch.tensor([[0, 5]], device=DEV), None)
    with pytest.raises(ValueError, match="ranges"):
        ops.segment_pool(h, torch.tensor([[3, 1]], device=DEV), None)
    with pytest.raises(ValueError, match="weights"):
        ops.segment_pool(h, torch.tensor([[0, 2]], device=DEV), -torch.ones(4, device=DEV))
    if DEV == "cuda":
        with pytest.raises(ValueError, match="device"):
            ops.segment_pool(h, torch.tensor([[0, 2]]), None)


# ------------------------------------------------------------------------------ token_salience

needs_salience = pytest.mark.skipif(
    not (_has_op("token_salience") and hasattr(reference, "token_salience")),
    reason="token_salience not merged into this branch",
)


def _mask(rng: random.Random, b: int, t: int) -> torch.Tensor:
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


TS_SHAPES = [
    (1, 1, 4),
    (2, 2, 1),
    (3, 5, 3),
    (2, 63, 16),
    (2, 64, 64),
    (3, 65, 40),
    (2, 200, 257),
    (1, 300, 1024),
]


@needs_gpu
@needs_salience
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape", TS_SHAPES)
def test_token_salience_matches_reference(gen, dtype, shape):
    b, t, d = shape
    h = (torch.randn(b, t, d, dtype=torch.float64) * 2 + 0.3).to(dtype)
    mask = _mask(gen, b, t)
    out = ops.token_salience(h.to(DEV), mask.to(DEV), 0)
    ref = reference.token_salience(h, mask)
    assert out.shape == (b, t) and out.dtype == torch.float32
    _finite(out)
    tol = {"rtol": 1e-4, "atol": 1e-6} if dtype != torch.float64 else {"rtol": 1e-6, "atol": 1e-8}
    torch.testing.assert_close(out.cpu(), ref, **tol)
    assert (out.cpu()[~mask] == 0).all()
    # Bit-identical on a second run.
    assert torch.equal(ops.token_salience(h.to(DEV), mask.to(DEV), 0), out)


@needs_gpu
@needs_salience
def test_token_salience_large_logits(gen):
    # Strongly correlated tokens: logits far from 0, the online max must keep exp() finite.
    b, t, d = 2, 150, 512
    base = torch.randn(1, 1, d) * 5
    h = base + 0.05 * torch.randn(b, t, d)
    h[:, :, 3] += 50.0  # a massive activation
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[1, 100:] = False
    out = ops.token_salience(h.to(DEV), mask.to(DEV), 0).cpu()
    _finite(out)
    torch.testing.assert_close(out, reference.token_salience(h, mask), rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(out.sum(1), torch.ones(b), rtol=1e-5, atol=1e-5)


@needs_gpu
@needs_salience
def test_token_salience_opcheck_cuda(gen):
    h = torch.randn(2, 17, 8, device=DEV)
    mask = _mask(gen, 2, 17).to(DEV)
    torch.library.opcheck(ops.token_salience.default, (h, mask, 0))


# ------------------------------------------------------------------------------ relational_loss

needs_relational = pytest.mark.skipif(
    not (_has_op("relational_loss") and hasattr(reference, "relational_loss")),
    reason="relational_loss not merged into this branch",
)


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


RL_CASES = [
    ([], 8, 8),
    ([0, 1, 0], 4, 5),
    ([2], 1, 1),
    ([3, 5, 1, 0, 7], 16, 24),
    ([64], 32, 48),
    ([65, 2, 130], 40, 72),
    ([200, 37], 128, 96),
    ([20] * 40, 64, 64),
    ([300], 1000, 2048),
]


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


@needs_gpu
@needs_relational
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("case", RL_CASES)
def test_relational_loss_matches_reference(gen, dtype, case):
    sizes, ds, dt = case
    us, ut, w, cu = _units(gen, sizes, ds, dt, dtype, dtype)
    usd = us.to(DEV).requires_grad_(True)
    utd = ut.to(DEV).requires_grad_(True)
    loss = ops.relational_loss(usd, utd, w.to(DEV), cu.to(DEV))
    ref, usr, utr = _rl_ref(us, ut, w, cu)
    assert loss.dim() == 0
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    _finite(loss)
    tol = {"rtol": 1e-9, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 2e-4, "atol": 1e-6}
    torch.testing.assert_close(loss.cpu().double(), ref.detach(), **tol)
    g = torch.rand(()) + 0.5
    gs, gt = torch.autograd.grad(loss, (usd, utd), g.to(DEV).to(loss.dtype))
    if ref.requires_grad:
        rgs, rgt = torch.autograd.grad(ref, (usr, utr), g.double(), allow_unused=True)
    else:
        rgs = rgt = None
    rgs = torch.zeros_like(usr) if rgs is None else rgs
    rgt = torch.zeros_like(utr) if rgt is None else rgt
    _finite(gs, gt)
    gtol = _tol(dtype) if dtype != torch.float32 else {"rtol": 1e-3, "atol": 1e-5}
    # The floor of the normalisation is an a-priori bound on the gradient, not a tiny constant:
    # where the exact gradient is 0 (D = 1: every cosine is +-1) the kernels return rounding
    # noise of the size of the terms they summed, which the bound covers.
    floor = _rl_grad_bound(us, ut, w, cu, g.item()) / 8 if us.numel() else 0.0
    scale = (
        max(rgs.abs().max().item(), rgt.abs().max().item(), floor, 1e-300) if us.numel() else 1.0
    )
    if dtype == torch.float16:  # tiny gradients land in fp16's subnormals (step 2^-24)
        gtol = {"rtol": gtol["rtol"], "atol": gtol["atol"] + 4 * 2.0**-24 / scale}
    torch.testing.assert_close(gs.cpu().double() / scale, rgs / scale, **gtol)
    torch.testing.assert_close(gt.cpu().double() / scale, rgt / scale, **gtol)


@needs_gpu
@needs_relational
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_relational_loss_zero_norm_unit(gen, dtype):
    # |u| = 0 < eps: the gradient is g_n / eps (~1e12 times larger than the others), so compare
    # row by row, each relative to its own size.
    us, ut, w, cu = _units(gen, [9, 70], 12, 10, dtype, dtype, zero_row=True)
    usd = us.to(DEV).requires_grad_(True)
    loss = ops.relational_loss(usd, ut.to(DEV), w.to(DEV), cu.to(DEV))
    ref, usr, _ = _rl_ref(us, ut, w, cu)
    torch.testing.assert_close(loss.cpu().double(), ref.detach(), rtol=2e-4, atol=1e-6)
    (gs,) = torch.autograd.grad(loss, usd)
    (rgs,) = torch.autograd.grad(ref, usr)
    row = rgs.abs().amax(1, keepdim=True).clamp_min(1e-30)
    torch.testing.assert_close(gs.cpu().double() / row, rgs / row, rtol=1e-3, atol=1e-4)


@needs_gpu
@needs_relational
def test_relational_loss_mixed_dtypes_and_one_side(gen):
    us, ut, w, cu = _units(gen, [70, 3, 0, 9], 48, 40, torch.bfloat16, torch.float32)
    loss = ops.relational_loss(us.to(DEV), ut.to(DEV), w.to(DEV), cu.to(DEV))
    ref, _, _ = _rl_ref(us, ut, w, cu)
    torch.testing.assert_close(loss.cpu().double(), ref.detach(), rtol=2e-4, atol=1e-6)
    one = torch.ones((), device=DEV)
    gs, gt = ops.relational_loss_backward(
        one, us.to(DEV), ut.to(DEV), w.to(DEV), cu.to(DEV), True, False
    )
    assert gs.dtype == torch.bfloat16 and gt.dtype == torch.float32
    assert (gt == 0).all()
    _finite(gs)


@needs_gpu
@needs_relational
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_relational_loss_bit_identical(gen, dtype):
    us, ut, w, cu = _units(gen, [130, 64, 7, 300], 96, 80, dtype, dtype)
    args = (us.to(DEV), ut.to(DEV), w.to(DEV), cu.to(DEV))
    loss = ops.relational_loss(*args)
    one = torch.ones((), device=DEV)
    gs, gt = ops.relational_loss_backward(one, *args, True, True)
    for _ in range(3):
        assert torch.equal(ops.relational_loss(*args), loss)
        gs2, gt2 = ops.relational_loss_backward(one, *args, True, True)
        assert torch.equal(gs2, gs) and torch.equal(gt2, gt)


@needs_gpu
@needs_relational
def test_relational_loss_gradcheck_cuda(gen):
    us, ut, w, cu = _units(gen, [5, 1, 70], 6, 4, torch.float64, torch.float64)
    w = w.double().to(DEV)
    cu = cu.to(DEV)
    us = us.to(DEV).requires_grad_(True)
    ut = ut.to(DEV).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: ops.relational_loss(a, b, w, cu), (us, ut))


@needs_gpu
@needs_relational
def test_relational_loss_opcheck_cuda(gen):
    us, ut, w, cu = _units(gen, [4, 6], 8, 5, torch.float32, torch.float32)
    args = (us.to(DEV).requires_grad_(True), ut.to(DEV).requires_grad_(True), w.to(DEV), cu.to(DEV))
    torch.library.opcheck(ops.relational_loss.default, args)


@needs_gpu
@needs_relational
def test_relational_loss_bad_input_cuda():
    us = torch.randn(5, 4, device=DEV)
    w = torch.ones(5, device=DEV)
    with pytest.raises(ValueError, match="cu_units"):
        ops.relational_loss(us, us, w, torch.tensor([0, 3, 2, 5], device=DEV))
    with pytest.raises(ValueError, match="unit_weights"):
        ops.relational_loss(us, us, -w, torch.tensor([0, 5], device=DEV))


@needs_gpu
@needs_relational
@pytest.mark.skipif(not _has_op("relational_loss_and_grad"), reason="fused op not merged")
@pytest.mark.parametrize("dtype", FLOATS)
def test_relational_loss_and_grad_fused(gen, dtype):
    us, ut, w, cu = _units(gen, [70, 1, 0, 130, 9], 40, 24, dtype, dtype)
    args = (us.to(DEV), ut.to(DEV), w.to(DEV), cu.to(DEV))
    loss, gs, gt = ops.relational_loss_and_grad(*args, True, True)
    _finite(loss, gs, gt)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    assert gs.dtype == acc and gt.dtype == acc  # kept in the accumulation dtype
    one = torch.ones((), device=DEV, dtype=acc)
    bs, bt = ops.relational_loss_backward(one, *args, True, True)
    # Same tiles, same kernels: the fused op equals forward + backward(1) bit for bit (the
    # backward rounds the same values to the input dtype).
    assert torch.equal(loss, ops.relational_loss(*args))
    assert torch.equal(gs.to(dtype), bs) and torch.equal(gt.to(dtype), bt)
    ref, _, _ = _rl_ref(us, ut, w, cu)
    tol = {"rtol": 1e-9, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 2e-4, "atol": 1e-6}
    torch.testing.assert_close(loss.cpu().double(), ref.detach(), **tol)
    _, gs0, gt0 = ops.relational_loss_and_grad(*args, False, True)
    assert gs0.shape == (0, us.shape[1]) and torch.equal(gt0, gt)
    # Public wrapper under loss scaling (GradScaler's 2^16) equals the plain op's backward.
    a = args[0].clone().requires_grad_(True)
    out = mta_ext.relational_loss(a, args[1], args[2], args[3])
    (ga,) = torch.autograd.grad(out, (a,), torch.tensor(65536.0, device=DEV, dtype=out.dtype))
    bs16, _ = ops.relational_loss_backward(one * 65536, *args, True, False)
    torch.testing.assert_close(ga.double(), bs16.double(), rtol=_tol(dtype)["rtol"], atol=0)
    # The public wrapper takes the fused path when inputs require grad.
    from mta_ext.ops import relational_loss as public

    a = args[0].clone().requires_grad_(True)
    b = args[1].clone().requires_grad_(True)
    out = public(a, b, args[2], args[3])
    ga, gb = torch.autograd.grad(out, (a, b), torch.tensor(0.5, device=DEV, dtype=out.dtype))
    torch.testing.assert_close(ga.double(), (0.5 * gs.double()), rtol=1e-2, atol=1e-6)
    torch.testing.assert_close(gb.double(), (0.5 * gt.double()), rtol=1e-2, atol=1e-6)


# ------------------------------------------------------------------------------ review findings


@needs_gpu
@needs_salience
@pytest.mark.parametrize("dtype", FLOATS)
def test_token_salience_two_tokens_width_one(dtype):
    # D = 1, std = 0: logits ~4e10. Both kernels must round the logit identically (no FMA
    # contraction in one of them), so the row maximum gives exp(0): [0.5, 0.5], not inf or 0.
    for pair in ((1.7, 2.3), (0.5, 3.0)):
        h = torch.tensor([[[pair[0]], [pair[1]]]]).to(dtype)
        out = ops.token_salience(h.to(DEV), torch.ones(1, 2, dtype=torch.bool, device=DEV), 0)
        assert out.cpu().tolist() == [[0.5, 0.5]], (dtype, pair, out)


@needs_gpu
@needs_relational
@pytest.mark.parametrize("dtype", FLOATS)
def test_relational_loss_identical_inputs_exact_zero(gen, dtype):
    # Decided contract: equal student and teacher units give a loss of exactly 0 on every device
    # (uncontracted cosine products on CUDA, two separate Gram products on the CPU).
    u = torch.randn(150, 24).to(dtype).to(DEV)
    w = torch.rand(150, device=DEV)
    cu = torch.tensor([0, 70, 150], device=DEV)
    assert ops.relational_loss(u, u.clone(), w, cu).item() == 0.0


@needs_gpu
@needs_relational
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_relational_loss_extreme_magnitudes(gen, dtype):
    us, ut, w, cu = _units(gen, [9, 70], 12, 10, dtype, dtype)
    base = ops.relational_loss(us.to(DEV), ut.to(DEV), w.to(DEV), cu.to(DEV)).cpu().double()
    # Powers of two: the same rounded values, scaled (norms stay above the 1e-12 clamp); squares
    # of 2^90-sized rows overflow fp32 unless the rows are scaled first.
    for s in (2.0**-30, 2.0**90):
        got = ops.relational_loss(
            (us * s).to(DEV), (ut * s).to(DEV), (w * 1e30).to(DEV), cu.to(DEV)
        )
        torch.testing.assert_close(got.cpu().double(), base, rtol=1e-5, atol=1e-7)


@needs_gpu
@needs_salience
@needs_relational
def test_non_finite_inputs_propagate_on_device(gen):
    # The contract of test_fuzz_ops.py, on the device (no host check: values propagate).
    h = torch.randn(3, 70, 8)
    m = torch.ones(3, 70, dtype=torch.bool)
    clean = ops.token_salience(h.to(DEV), m.to(DEV), 0).cpu()
    h[0, 5, 2] = float("nan")
    out = ops.token_salience(h.to(DEV), m.to(DEV), 0).cpu()
    assert torch.isnan(out[0]).all() and torch.equal(out[1:], clean[1:])
    us, ut, w, cu = _units(gen, [9, 70], 12, 10, torch.float32, torch.float32)
    us[2, 1] = float("inf")
    loss = ops.relational_loss(us.to(DEV), ut.to(DEV), w.to(DEV), cu.to(DEV))
    assert torch.isnan(loss).item()
    hp = torch.randn(6, 16)
    hp[1, 3] = float("nan")
    pooled = ops.segment_pool(hp.to(DEV), torch.tensor([[0, 2], [2, 6]], device=DEV), None).cpu()
    assert torch.isnan(pooled[0, 3]) and torch.isfinite(pooled[1]).all()
