"""relational_loss (DSA) on every device of DEVICES vs the pure-PyTorch reference
(docs/DESIGN.md §2.4): correctness, gradients, opcheck, determinism, bad input.

Inputs: ``op_registry.relational_loss_sample_inputs`` (opcheck, gradcheck) and
``op_helpers._units`` (ragged examples, correlated teacher units, some zero weights), all seeded
by the ``rng`` fixture (fresh seed per run, printed; MTA_TEST_SEED replays). CUDA outputs are
NaN-poisoned: an element no kernel wrote shows up as NaN.
"""

from __future__ import annotations

import pytest
import torch
from op_helpers import (
    DEVICES,
    FLOATS,
    _finite,
    _rl_grad_bound,
    _rl_ref,
    _tol,
    _units,
    ops,
    tdev,
    value_checks_on,
)
from op_registry import relational_loss_sample_inputs

import mta_ext
from mta_ext import reference
from mta_ext.ops import relational_loss

pytestmark = pytest.mark.usefixtures("poison_outputs")


def _inputs(rng, counts, ds, dt, dtype=torch.float64, *, device="cpu", requires_grad=True):
    """``(u_student, u_teacher, unit_weights, cu_units)`` (weights in ``dtype``) on ``device``."""
    us, ut, w, cu = _units(rng, counts, ds, dt, dtype, dtype)
    dev = tdev(device)
    us, ut = us.to(dev).requires_grad_(requires_grad), ut.to(dev).requires_grad_(requires_grad)
    return us, ut, w.to(dtype).to(dev), cu.to(dev)


def _grads(fn, us, ut, w, cu):
    loss = fn(us, ut, w, cu)
    if not loss.requires_grad:  # the reference has no graph when no example has a pair
        return loss, torch.zeros_like(us), torch.zeros_like(ut)
    gs, gt = torch.autograd.grad(loss, [us, ut])
    return loss, gs, gt


# ------------------------------------------------------------------ correctness

CASES = [  # (units per example, Ds, Dt)
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


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("device", DEVICES)
def test_matches_reference(rng, dtype, case, device):
    """Loss and both gradients vs autograd through the float64 reference, gradients relative
    to their size (floored by the a-priori gradient bound)."""
    sizes, ds, dt = case
    us, ut, w, cu = _units(rng, sizes, ds, dt, dtype, dtype)
    usd = us.to(tdev(device)).requires_grad_(True)
    utd = ut.to(tdev(device)).requires_grad_(True)
    loss = ops.relational_loss(usd, utd, w.to(tdev(device)), cu.to(tdev(device)))
    ref, usr, utr = _rl_ref(us, ut, w, cu)
    assert loss.dim() == 0
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    _finite(loss)
    tol = {"rtol": 1e-9, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 2e-4, "atol": 1e-6}
    torch.testing.assert_close(loss.cpu().double(), ref.detach(), **tol)
    g = torch.rand(()) + 0.5
    gs, gt = torch.autograd.grad(loss, (usd, utd), g.to(tdev(device)).to(loss.dtype))
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


COUNTS = [[], [0], [1], [2], [0, 0], [3, 0, 1, 5], [1, 1, 1], [7, 2, 0, 4, 9]]


@pytest.mark.parametrize("counts", COUNTS)
@pytest.mark.parametrize("ds,dt", [(1, 1), (7, 9), (576, 640)])
def test_matches_reference_fp64_unscaled(rng, counts, ds, dt):
    """CPU kernel, float64: loss and gradients element by element (no scaling)."""
    us, ut, w, cu = _inputs(rng, counts, ds, dt)
    lo, gso, gto = _grads(relational_loss, us, ut, w, cu)
    le, gse, gte = _grads(reference.relational_loss, us, ut, w, cu)
    assert lo.dtype == torch.float64 and lo.dim() == 0
    torch.testing.assert_close(lo, le, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(gso, gse, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(gto, gte, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("counts", [[3, 0, 1, 5], [64, 130]])
def test_matches_reference_fp32_unscaled(rng, counts):
    us, ut, w, cu = _inputs(rng, counts, 96, 160, dtype=torch.float32)
    lo, gso, gto = _grads(relational_loss, us, ut, w, cu)
    le, gse, gte = _grads(reference.relational_loss, us, ut, w, cu)
    assert lo.dtype == torch.float32
    torch.testing.assert_close(lo, le, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(gso, gse, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(gto, gte, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision(rng, dtype):
    # Same rounded inputs in fp64 through the reference: differences come from fp32 accumulation
    # only; the grads are rounded to the input dtype.
    us, ut, w, cu = _inputs(rng, [20, 3, 31], 64, 80, dtype=dtype)
    lo, gso, gto = _grads(relational_loss, us, ut, w, cu)
    assert lo.dtype == torch.float32 and gso.dtype == dtype and gto.dtype == dtype
    u64 = [t.detach().double().requires_grad_() for t in (us, ut)]
    le, gse, gte = _grads(reference.relational_loss, u64[0], u64[1], w.double(), cu)
    torch.testing.assert_close(lo.double(), le, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gso.double(), gse, rtol=2e-2, atol=2e-4)
    torch.testing.assert_close(gto.double(), gte, rtol=2e-2, atol=2e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_mixed_dtypes(rng, device):
    dev = tdev(device)
    # bf16 student, fp32 teacher through the public function: grads in each input's dtype.
    us, ut, w, cu = _inputs(rng, [4, 6], 8, 12, dtype=torch.float32, device=device)
    ub = us.detach().bfloat16().requires_grad_()
    lo, gs, gt = _grads(relational_loss, ub, ut, w, cu)
    le = reference.relational_loss(
        ub.detach().double().cpu(), ut.detach().double().cpu(), w.double().cpu(), cu.cpu()
    )
    assert gs.dtype == torch.bfloat16 and gt.dtype == torch.float32
    torch.testing.assert_close(lo.double().cpu(), le, rtol=1e-5, atol=1e-7)
    # ... and through the raw ops, larger, one side's gradient only.
    us, ut, w, cu = _units(rng, [70, 3, 0, 9], 48, 40, torch.bfloat16, torch.float32)
    loss = ops.relational_loss(us.to(dev), ut.to(dev), w.to(dev), cu.to(dev))
    ref, _, _ = _rl_ref(us, ut, w, cu)
    torch.testing.assert_close(loss.cpu().double(), ref.detach(), rtol=2e-4, atol=1e-6)
    one = torch.ones((), device=dev)
    gs, gt = ops.relational_loss_backward(
        one, us.to(dev), ut.to(dev), w.to(dev), cu.to(dev), True, False
    )
    assert gs.dtype == torch.bfloat16 and gt.dtype == torch.float32
    assert (gt == 0).all()
    _finite(gs)


@pytest.mark.parametrize("device", DEVICES)
def test_zero_units_and_zero_weights_give_zero_and_zero_grads(rng, device):
    for counts in ([], [0, 0, 0], [1, 1]):
        us, ut, w, cu = _inputs(rng, counts, 4, 6, device=device)
        loss = relational_loss(us, ut, w, cu)
        assert loss.item() == 0.0
        if us.numel():
            gs, gt = torch.autograd.grad(loss, [us, ut])
            assert (gs == 0).all() and (gt == 0).all()
    us, ut, w, cu = _inputs(rng, [3, 4], 4, 6, device=device)
    loss = relational_loss(us, ut, torch.zeros_like(w), cu)
    gs, gt = torch.autograd.grad(loss, [us, ut])
    assert loss.item() == 0.0 and (gs == 0).all() and (gt == 0).all()


def test_zero_vectors_are_finite(rng):
    us, ut, w, cu = _inputs(rng, [3, 2], 4, 5)
    with torch.no_grad():
        us[1] = 0
        ut[3] = 0
    lo, gso, gto = _grads(relational_loss, us, ut, w, cu)
    le, gse, gte = _grads(reference.relational_loss, us, ut, w, cu)
    assert torch.isfinite(gso).all() and torch.isfinite(gto).all()
    torch.testing.assert_close(lo, le)
    torch.testing.assert_close(gso, gse)
    torch.testing.assert_close(gto, gte)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("device", DEVICES)
def test_zero_norm_unit(rng, dtype, device):
    # |u| = 0 < eps: the gradient is g_n / eps (~1e12 times larger than the others), so compare
    # row by row, each relative to its own size.
    us, ut, w, cu = _units(rng, [9, 70], 12, 10, dtype, dtype, zero_row=True)
    usd = us.to(tdev(device)).requires_grad_(True)
    loss = ops.relational_loss(usd, ut.to(tdev(device)), w.to(tdev(device)), cu.to(tdev(device)))
    ref, usr, _ = _rl_ref(us, ut, w, cu)
    torch.testing.assert_close(loss.cpu().double(), ref.detach(), rtol=2e-4, atol=1e-6)
    (gs,) = torch.autograd.grad(loss, usd)
    (rgs,) = torch.autograd.grad(ref, usr)
    row = rgs.abs().amax(1, keepdim=True).clamp_min(1e-30)
    torch.testing.assert_close(gs.cpu().double() / row, rgs / row, rtol=1e-3, atol=1e-4)


def test_only_requested_grads(rng):
    us, ut, w, cu = _inputs(rng, [3, 4], 4, 6)
    ut.requires_grad_(False)
    loss = relational_loss(us, ut, w, cu)
    (gs,) = torch.autograd.grad(loss, [us])
    torch.testing.assert_close(
        gs, torch.autograd.grad(reference.relational_loss(us, ut, w, cu), [us])[0]
    )


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("device", DEVICES)
def test_identical_inputs_give_exact_zero(rng, dtype, device):
    # Decided contract: equal student and teacher units give a loss of exactly 0 on every device
    # (uncontracted cosine products on CUDA, two separate Gram products on the CPU).
    dev = tdev(device)
    for n, cu in ((150, [0, 70, 150]), (70, [0, 70])):
        u = torch.randn(n, 24 if n == 150 else 9).to(dtype).to(dev)
        w = torch.rand(n, device=dev)
        assert ops.relational_loss(u, u.clone(), w, torch.tensor(cu, device=dev)).item() == 0.0
        assert mta_ext.relational_loss(u, u.clone(), w, torch.tensor(cu, device=dev)) == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("device", DEVICES)
def test_extreme_magnitudes(rng, dtype, device):
    us, ut, w, cu = _units(rng, [9, 70], 12, 10, dtype, dtype)
    base = (
        ops.relational_loss(
            us.to(tdev(device)), ut.to(tdev(device)), w.to(tdev(device)), cu.to(tdev(device))
        )
        .cpu()
        .double()
    )
    # Powers of two: the same rounded values, scaled (norms stay above the 1e-12 clamp); squares
    # of 2^90-sized rows overflow fp32 unless the rows are scaled first.
    for s in (2.0**-30, 2.0**90):
        got = ops.relational_loss(
            (us * s).to(tdev(device)),
            (ut * s).to(tdev(device)),
            (w * 1e30).to(tdev(device)),
            cu.to(tdev(device)),
        )
        torch.testing.assert_close(got.cpu().double(), base, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("device", DEVICES)
def test_fp64_beyond_the_fp32_exponent_range(rng, device):
    # fp64 rows of 2^600 / 2^-600: the per-row power-of-two scales must be exact in fp64 (an
    # exponent passed through fp32 -- torch.ldexp in some releases -- makes them inf or 0).
    us, ut, w, cu = _units(rng, [9, 70], 12, 10, torch.float64, torch.float64)
    d = tdev(device)
    one = torch.ones((), dtype=torch.float64, device=d)
    base = ops.relational_loss(us.to(d), ut.to(d), w.to(d), cu.to(d)).cpu()
    g_base = ops.relational_loss_backward(one, us.to(d), ut.to(d), w.to(d), cu.to(d))
    big = 2.0**600  # scale invariant: the same loss, gradients scaled by 1 / 2^600
    got = ops.relational_loss((us * big).to(d), (ut * big).to(d), w.to(d), cu.to(d)).cpu()
    torch.testing.assert_close(got, base, rtol=1e-12, atol=0)
    gs, gt = ops.relational_loss_backward(
        one, (us * big).to(d), (ut * big).to(d), w.to(d), cu.to(d)
    )
    torch.testing.assert_close((gs * big).cpu(), g_base[0].cpu(), rtol=1e-10, atol=0)
    torch.testing.assert_close((gt * big).cpu(), g_base[1].cpu(), rtol=1e-10, atol=0)
    # 2^-600: every norm is below the 1e-12 clamp of F.normalize; as the float64 reference.
    tiny = 2.0**-600
    got = ops.relational_loss((us * tiny).to(d), (ut * tiny).to(d), w.to(d), cu.to(d)).cpu()
    ref, _, _ = _rl_ref(us * tiny, ut * tiny, w, cu, need_grad=False)
    torch.testing.assert_close(got, ref.detach(), rtol=1e-12, atol=0)


# ------------------------------------------------------------------ the fused path


def test_fused_and_recompute_paths_agree(rng):
    # The public function uses relational_loss_and_grad (gradients computed in the forward);
    # calling the plain op under autograd uses relational_loss_backward (recomputes).
    us, ut, w, cu = _inputs(rng, [5, 0, 7, 1], 12, 9, dtype=torch.float32)
    lf, gsf, gtf = _grads(relational_loss, us, ut, w, cu)
    lr, gsr, gtr = _grads(torch.ops.mta_ext.relational_loss, us, ut, w, cu)
    assert torch.equal(lf, lr)
    torch.testing.assert_close(gsf, gsr, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(gtf, gtr, rtol=1e-6, atol=1e-8)
    loss = relational_loss(us, ut, w, cu)
    (g2,) = torch.autograd.grad(loss * 3.0, [us])
    torch.testing.assert_close(g2, 3.0 * gsf)
    with torch.no_grad():
        assert torch.equal(relational_loss(us, ut, w, cu), lf.detach())


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("device", DEVICES)
def test_fused_equals_forward_and_backward(rng, dtype, device):
    us, ut, w, cu = _units(rng, [70, 1, 0, 130, 9], 40, 24, dtype, dtype)
    args = (us.to(tdev(device)), ut.to(tdev(device)), w.to(tdev(device)), cu.to(tdev(device)))
    loss, gs, gt = ops.relational_loss_and_grad(*args, True, True)
    _finite(loss, gs, gt)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    assert gs.dtype == acc and gt.dtype == acc  # kept in the accumulation dtype
    one = torch.ones((), device=tdev(device), dtype=acc)
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
    (ga,) = torch.autograd.grad(
        out, (a,), torch.tensor(65536.0, device=tdev(device), dtype=out.dtype)
    )
    bs16, _ = ops.relational_loss_backward(one * 65536, *args, True, False)
    torch.testing.assert_close(ga.double(), bs16.double(), rtol=_tol(dtype)["rtol"], atol=0)
    # The public wrapper takes the fused path when inputs require grad.
    a = args[0].clone().requires_grad_(True)
    b = args[1].clone().requires_grad_(True)
    out = relational_loss(a, b, args[2], args[3])
    ga, gb = torch.autograd.grad(
        out, (a, b), torch.tensor(0.5, device=tdev(device), dtype=out.dtype)
    )
    torch.testing.assert_close(ga.double(), (0.5 * gs.double()), rtol=1e-2, atol=1e-6)
    torch.testing.assert_close(gb.double(), (0.5 * gt.double()), rtol=1e-2, atol=1e-6)


# ------------------------------------------------------------------ gradients, opcheck

NEEDS = [(True, True), (False, True), (True, False)]


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck(rng, device):
    """gradcheck in float64 w.r.t. both unit sets, on every sample."""
    for s in relational_loss_sample_inputs(device, torch.float64):
        us, ut, w, cu = s.args

        def fn(a, b, w=w, cu=cu):
            return relational_loss(a, b, w, cu)

        assert torch.autograd.gradcheck(fn, (us, ut)), s.desc


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(rng, dtype, device):
    """The schemas, fake kernels and autograd registrations of the three ops (the fused op with
    each combination of requested gradients)."""
    for i, s in enumerate(relational_loss_sample_inputs(device, dtype)):
        us, ut, w, cu = s.args
        torch.library.opcheck(ops.relational_loss.default, (us, ut, w, cu))
        g = torch.ones((), dtype=torch.float64 if dtype == torch.float64 else torch.float32)
        torch.library.opcheck(
            ops.relational_loss_backward.default,
            (g.to(us.device), us.detach(), ut.detach(), w, cu, True, False),
        )
        need = NEEDS[i % len(NEEDS)]
        torch.library.opcheck(ops.relational_loss_and_grad.default, (us, ut, w, cu, *need))


# ------------------------------------------------------------------ determinism


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("device", DEVICES)
def test_bit_identical_repeats(rng, dtype, device):
    """Forward, raw backward and the public function's gradients give the same bits on every
    repeat."""
    us, ut, w, cu = _units(rng, [130, 64, 7, 300], 96, 80, dtype, dtype)
    args = (us.to(tdev(device)), ut.to(tdev(device)), w.to(tdev(device)), cu.to(tdev(device)))
    loss = ops.relational_loss(*args)
    one = torch.ones((), device=tdev(device))
    gs, gt = ops.relational_loss_backward(one, *args, True, True)
    for _ in range(3):
        assert torch.equal(ops.relational_loss(*args), loss)
        gs2, gt2 = ops.relational_loss_backward(one, *args, True, True)
        assert torch.equal(gs2, gs) and torch.equal(gt2, gt)
    us, ut, w, cu = _inputs(rng, [40, 70, 5, 90], 96, 128, dtype=dtype, device=device)
    r1 = _grads(relational_loss, us, ut, w, cu)
    r2 = _grads(relational_loss, us, ut, w, cu)
    for a, b in zip(r1, r2, strict=True):
        assert torch.equal(a, b)


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("device", DEVICES)
def test_bad_input(rng, device):
    """Metadata checks always; value checks (cu_units, weights) on CPU tensors always and on a
    device in the debug mode (no host sync otherwise)."""
    us, ut, w, cu = _inputs(rng, [2, 3], 4, 6, requires_grad=False, device=device)
    w = w + 0.1  # no zero weight: -w is negative everywhere

    def t(x):
        return torch.tensor(x, device=tdev(device))

    cases = [
        (TypeError, "u_student", (us.long(), ut, w, cu)),
        (TypeError, "cu_units must be an int64", (us, ut, w, cu.float())),
        (ValueError, "u_teacher has 4 units", (us, ut[:4], w, cu)),
        (ValueError, "unit_weights has 4 entries", (us, ut, w[:4], cu)),
        (ValueError, r"u_student must have shape \[N, Ds\]", (us[0], ut, w, cu)),
        (ValueError, "same device", (us, ut, w, cu.to("meta"))),
        (ValueError, r"cu_units\[0\] must be 0", (us, ut, w, t([1, 2, 5]))),
        (ValueError, "example 1 has", (us, ut, w, t([0, 3, 2, 5]))),
        (ValueError, "must equal the number of units N = 5", (us, ut, w, t([0, 2, 4]))),
        (ValueError, "unit_weights must be finite and >= 0", (us, ut, -w, cu)),
        (ValueError, "unit_weights must be finite", (us, ut, w * float("nan"), cu)),
    ]
    with value_checks_on(device):
        for exc, msg, args in cases:
            with pytest.raises(exc, match=msg):
                relational_loss(*args)
            if exc is ValueError and "same device" not in msg:
                with pytest.raises(exc, match=msg):  # the kernel's own checks
                    ops.relational_loss(*args)


def test_public_name():
    assert mta_ext.relational_loss is relational_loss
