"""relational_loss op (DSA) vs the pure-PyTorch reference (docs/DESIGN.md §2.4)."""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICES, tdev
from op_helpers import FLOATS, _finite, _rl_grad_bound, _rl_ref, _tol, _units, ops, value_checks_on

import mta_ext
from mta_ext import reference as ref
from mta_ext.ops import relational_loss

COUNTS = [[], [0], [1], [2], [0, 0], [3, 0, 1, 5], [1, 1, 1], [7, 2, 0, 4, 9]]

# CUDA outputs NaN-poisoned: an element no kernel wrote shows up as NaN.
pytestmark = pytest.mark.usefixtures("poison_outputs")


def _inputs(counts, Ds, Dt, dtype=torch.float64, seed=0, requires_grad=True):
    g = torch.Generator().manual_seed(seed)
    cu = torch.tensor([0, *counts], dtype=torch.long).cumsum(0)
    N = int(cu[-1])
    us = torch.randn(N, Ds, generator=g, dtype=torch.float64).to(dtype)
    ut = torch.randn(N, Dt, generator=g, dtype=torch.float64).to(dtype)
    w = torch.rand(N, generator=g, dtype=torch.float64).to(dtype)
    return us.requires_grad_(requires_grad), ut.requires_grad_(requires_grad), w, cu


def _grads(fn, us, ut, w, cu):
    loss = fn(us, ut, w, cu)
    if not loss.requires_grad:  # the reference has no graph when no example has a pair
        return loss, torch.zeros_like(us), torch.zeros_like(ut)
    gs, gt = torch.autograd.grad(loss, [us, ut])
    return loss, gs, gt


@pytest.mark.parametrize("counts", COUNTS)
@pytest.mark.parametrize("Ds,Dt", [(1, 1), (7, 9), (576, 640)])
def test_matches_reference_fp64(counts, Ds, Dt):
    us, ut, w, cu = _inputs(counts, Ds, Dt, seed=len(counts) + Ds)
    lo, gso, gto = _grads(relational_loss, us, ut, w, cu)
    le, gse, gte = _grads(ref.relational_loss, us, ut, w, cu)
    assert lo.dtype == torch.float64 and lo.dim() == 0
    torch.testing.assert_close(lo, le, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(gso, gse, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(gto, gte, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("counts", [[3, 0, 1, 5], [64, 130]])
def test_matches_reference_fp32(counts):
    us, ut, w, cu = _inputs(counts, 96, 160, dtype=torch.float32, seed=1)
    lo, gso, gto = _grads(relational_loss, us, ut, w, cu)
    le, gse, gte = _grads(ref.relational_loss, us, ut, w, cu)
    assert lo.dtype == torch.float32
    torch.testing.assert_close(lo, le, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(gso, gse, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(gto, gte, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision(dtype):
    # Same rounded inputs in fp64 through the reference: differences come from fp32 accumulation
    # only; the grads are rounded to the input dtype.
    us, ut, w, cu = _inputs([20, 3, 31], 64, 80, dtype=dtype, seed=2)
    lo, gso, gto = _grads(relational_loss, us, ut, w, cu)
    assert lo.dtype == torch.float32 and gso.dtype == dtype and gto.dtype == dtype
    u64 = [t.detach().double().requires_grad_() for t in (us, ut)]
    le, gse, gte = _grads(ref.relational_loss, u64[0], u64[1], w.double(), cu)
    torch.testing.assert_close(lo.double(), le, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gso.double(), gse, rtol=2e-2, atol=2e-4)
    torch.testing.assert_close(gto.double(), gte, rtol=2e-2, atol=2e-4)


def test_mixed_dtypes():
    us, ut, w, cu = _inputs([4, 6], 8, 12, dtype=torch.float32, seed=3)
    ub = us.detach().bfloat16().requires_grad_()
    lo, gs, gt = _grads(relational_loss, ub, ut, w, cu)
    le = ref.relational_loss(ub.detach().double(), ut.detach().double(), w.double(), cu)
    assert gs.dtype == torch.bfloat16 and gt.dtype == torch.float32
    torch.testing.assert_close(lo.double(), le, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("counts", [[3, 0, 2], [1], [4]])
def test_gradcheck_both_inputs(counts):
    us, ut, w, cu = _inputs(counts, 5, 3, seed=4)
    assert torch.autograd.gradcheck(lambda a, b: relational_loss(a, b, w, cu), (us, ut))


def test_zero_units_and_zero_weights_give_zero_and_zero_grads():
    for counts in ([], [0, 0, 0], [1, 1]):
        us, ut, w, cu = _inputs(counts, 4, 6, seed=5)
        loss = relational_loss(us, ut, w, cu)
        assert loss.item() == 0.0
        if us.numel():
            gs, gt = torch.autograd.grad(loss, [us, ut])
            assert (gs == 0).all() and (gt == 0).all()
    us, ut, w, cu = _inputs([3, 4], 4, 6, seed=6)
    loss = relational_loss(us, ut, torch.zeros_like(w), cu)
    gs, gt = torch.autograd.grad(loss, [us, ut])
    assert loss.item() == 0.0 and (gs == 0).all() and (gt == 0).all()


def test_zero_vectors_are_finite():
    us, ut, w, cu = _inputs([3, 2], 4, 5, seed=7)
    with torch.no_grad():
        us[1] = 0
        ut[3] = 0
    lo, gso, gto = _grads(relational_loss, us, ut, w, cu)
    le, gse, gte = _grads(ref.relational_loss, us, ut, w, cu)
    assert torch.isfinite(gso).all() and torch.isfinite(gto).all()
    torch.testing.assert_close(lo, le)
    torch.testing.assert_close(gso, gse)
    torch.testing.assert_close(gto, gte)


def test_deterministic_backward():
    us, ut, w, cu = _inputs([40, 70, 5, 90], 96, 128, dtype=torch.float32, seed=8)
    r1 = _grads(relational_loss, us, ut, w, cu)
    r2 = _grads(relational_loss, us, ut, w, cu)
    for a, b in zip(r1, r2, strict=True):
        assert torch.equal(a, b)


def test_only_requested_grads():
    us, ut, w, cu = _inputs([3, 4], 4, 6, seed=9)
    ut.requires_grad_(False)
    loss = relational_loss(us, ut, w, cu)
    (gs,) = torch.autograd.grad(loss, [us])
    torch.testing.assert_close(gs, torch.autograd.grad(ref.relational_loss(us, ut, w, cu), [us])[0])


def test_opcheck():
    for counts, dtype in (([3, 0, 2], torch.float64), ([], torch.float32), ([2, 5], torch.float32)):
        us, ut, w, cu = _inputs(counts, 6, 4, dtype=dtype, seed=10)
        torch.library.opcheck(torch.ops.mta_ext.relational_loss.default, (us, ut, w, cu))
        g = torch.ones((), dtype=torch.float64 if dtype == torch.float64 else torch.float32)
        torch.library.opcheck(
            torch.ops.mta_ext.relational_loss_backward.default,
            (g, us.detach(), ut.detach(), w, cu, True, False),
        )


def test_fused_and_recompute_paths_agree():
    # The public function uses relational_loss_and_grad (gradients computed in the forward);
    # calling the plain op under autograd uses relational_loss_backward (recomputes).
    us, ut, w, cu = _inputs([5, 0, 7, 1], 12, 9, dtype=torch.float32, seed=11)
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


def test_opcheck_fused():
    for counts, dtype, need in (
        ([3, 0, 2], torch.float64, (True, True)),
        ([2, 5], torch.float32, (True, False)),
        ([], torch.float32, (False, True)),
    ):
        us, ut, w, cu = _inputs(counts, 6, 4, dtype=dtype, seed=12)
        torch.library.opcheck(
            torch.ops.mta_ext.relational_loss_and_grad.default, (us, ut, w, cu, *need)
        )


def test_bad_inputs():
    us, ut, w, cu = _inputs([2, 3], 4, 6, requires_grad=False)
    cases = [
        (TypeError, "u_student", (us.long(), ut, w, cu)),
        (TypeError, "cu_units must be an int64", (us, ut, w, cu.float())),
        (ValueError, "u_teacher has 4 units", (us, ut[:4], w, cu)),
        (ValueError, "unit_weights has 4 entries", (us, ut, w[:4], cu)),
        (ValueError, r"u_student must have shape \[N, Ds\]", (us[0], ut, w, cu)),
        (ValueError, "same device", (us, ut, w, cu.to("meta"))),
        (ValueError, r"cu_units\[0\] must be 0", (us, ut, w, torch.tensor([1, 2, 5]))),
        (ValueError, "example 1 has", (us, ut, w, torch.tensor([0, 3, 2, 5]))),
        (ValueError, "must equal the number of units N = 5", (us, ut, w, torch.tensor([0, 2, 4]))),
        (ValueError, "unit_weights must be finite and >= 0", (us, ut, -w, cu)),
        (ValueError, "unit_weights must be finite", (us, ut, w * float("nan"), cu)),
    ]
    for exc, msg, args in cases:
        with pytest.raises(exc, match=msg):
            relational_loss(*args)


def test_public_name():
    assert mta_ext.relational_loss is relational_loss


# ------------------------------------------------------------------------------ every device
# Fresh random inputs each run (seed printed; MTA_TEST_SEED replays), outputs NaN-poisoned on
# CUDA, on each device of DEVICES (CPU always, CUDA when present): reference comparison on
# ragged / empty / overlapping / unaligned inputs, gradcheck, bit-identical backward, opcheck,
# bad input.


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


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("case", RL_CASES)
@pytest.mark.parametrize("device", DEVICES)
def test_relational_loss_matches_reference(rng, dtype, case, device):
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


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("device", DEVICES)
def test_relational_loss_zero_norm_unit(rng, dtype, device):
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


@pytest.mark.parametrize("device", DEVICES)
def test_relational_loss_mixed_dtypes_and_one_side(rng, device):
    us, ut, w, cu = _units(rng, [70, 3, 0, 9], 48, 40, torch.bfloat16, torch.float32)
    loss = ops.relational_loss(
        us.to(tdev(device)), ut.to(tdev(device)), w.to(tdev(device)), cu.to(tdev(device))
    )
    ref, _, _ = _rl_ref(us, ut, w, cu)
    torch.testing.assert_close(loss.cpu().double(), ref.detach(), rtol=2e-4, atol=1e-6)
    one = torch.ones((), device=tdev(device))
    gs, gt = ops.relational_loss_backward(
        one,
        us.to(tdev(device)),
        ut.to(tdev(device)),
        w.to(tdev(device)),
        cu.to(tdev(device)),
        True,
        False,
    )
    assert gs.dtype == torch.bfloat16 and gt.dtype == torch.float32
    assert (gt == 0).all()
    _finite(gs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("device", DEVICES)
def test_relational_loss_bit_identical(rng, dtype, device):
    us, ut, w, cu = _units(rng, [130, 64, 7, 300], 96, 80, dtype, dtype)
    args = (us.to(tdev(device)), ut.to(tdev(device)), w.to(tdev(device)), cu.to(tdev(device)))
    loss = ops.relational_loss(*args)
    one = torch.ones((), device=tdev(device))
    gs, gt = ops.relational_loss_backward(one, *args, True, True)
    for _ in range(3):
        assert torch.equal(ops.relational_loss(*args), loss)
        gs2, gt2 = ops.relational_loss_backward(one, *args, True, True)
        assert torch.equal(gs2, gs) and torch.equal(gt2, gt)


@pytest.mark.parametrize("device", DEVICES)
def test_relational_loss_gradcheck_on_device(rng, device):
    us, ut, w, cu = _units(rng, [5, 1, 70], 6, 4, torch.float64, torch.float64)
    w = w.double().to(tdev(device))
    cu = cu.to(tdev(device))
    us = us.to(tdev(device)).requires_grad_(True)
    ut = ut.to(tdev(device)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: ops.relational_loss(a, b, w, cu), (us, ut))


@pytest.mark.parametrize("device", DEVICES)
def test_relational_loss_opcheck_on_device(rng, device):
    us, ut, w, cu = _units(rng, [4, 6], 8, 5, torch.float32, torch.float32)
    args = (
        us.to(tdev(device)).requires_grad_(True),
        ut.to(tdev(device)).requires_grad_(True),
        w.to(tdev(device)),
        cu.to(tdev(device)),
    )
    torch.library.opcheck(ops.relational_loss.default, args)


@pytest.mark.parametrize("device", DEVICES)
def test_relational_loss_bad_input_on_device(device):
    us = torch.randn(5, 4, device=tdev(device))
    w = torch.ones(5, device=tdev(device))
    # Value checks: on CPU always, on a device in the debug mode (no host sync otherwise).
    with value_checks_on(device):
        with pytest.raises(ValueError, match="cu_units"):
            ops.relational_loss(us, us, w, torch.tensor([0, 3, 2, 5], device=tdev(device)))
        with pytest.raises(ValueError, match="unit_weights"):
            ops.relational_loss(us, us, -w, torch.tensor([0, 5], device=tdev(device)))


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("device", DEVICES)
def test_relational_loss_and_grad_fused(rng, dtype, device):
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
    from mta_ext.ops import relational_loss as public

    a = args[0].clone().requires_grad_(True)
    b = args[1].clone().requires_grad_(True)
    out = public(a, b, args[2], args[3])
    ga, gb = torch.autograd.grad(
        out, (a, b), torch.tensor(0.5, device=tdev(device), dtype=out.dtype)
    )
    torch.testing.assert_close(ga.double(), (0.5 * gs.double()), rtol=1e-2, atol=1e-6)
    torch.testing.assert_close(gb.double(), (0.5 * gt.double()), rtol=1e-2, atol=1e-6)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("device", DEVICES)
def test_relational_loss_identical_inputs_exact_zero(rng, dtype, device):
    # Decided contract: equal student and teacher units give a loss of exactly 0 on every device
    # (uncontracted cosine products on CUDA, two separate Gram products on the CPU).
    u = torch.randn(150, 24).to(dtype).to(tdev(device))
    w = torch.rand(150, device=tdev(device))
    cu = torch.tensor([0, 70, 150], device=tdev(device))
    assert ops.relational_loss(u, u.clone(), w, cu).item() == 0.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("device", DEVICES)
def test_relational_loss_extreme_magnitudes(rng, dtype, device):
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
def test_relational_loss_fp64_beyond_the_fp32_exponent_range(rng, device):
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


@pytest.mark.parametrize("device", DEVICES)
def test_non_finite_inputs_propagate_on_device(rng, device):
    # The contract of test_fuzz_ops.py, on the device (no host check: values propagate).
    h = torch.randn(3, 70, 8)
    m = torch.ones(3, 70, dtype=torch.bool)
    clean = ops.token_salience(h.to(tdev(device)), m.to(tdev(device)), 0).cpu()
    h[0, 5, 2] = float("nan")
    out = ops.token_salience(h.to(tdev(device)), m.to(tdev(device)), 0).cpu()
    assert torch.isnan(out[0]).all() and torch.equal(out[1:], clean[1:])
    us, ut, w, cu = _units(rng, [9, 70], 12, 10, torch.float32, torch.float32)
    us[2, 1] = float("inf")
    loss = ops.relational_loss(
        us.to(tdev(device)), ut.to(tdev(device)), w.to(tdev(device)), cu.to(tdev(device))
    )
    assert torch.isnan(loss).item()
    hp = torch.randn(6, 16)
    hp[1, 3] = float("nan")
    pooled = ops.segment_pool(
        hp.to(tdev(device)), torch.tensor([[0, 2], [2, 6]], device=tdev(device)), None
    ).cpu()
    assert torch.isnan(pooled[0, 3]) and torch.isfinite(pooled[1]).all()
