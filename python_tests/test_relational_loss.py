"""relational_loss op (DSA) vs the pure-PyTorch reference (docs/DESIGN.md §2.4)."""

from __future__ import annotations

import pytest
import torch

import mta_ext
from mta_ext import reference as ref
from mta_ext.ops import relational_loss

COUNTS = [[], [0], [1], [2], [0, 0], [3, 0, 1, 5], [1, 1, 1], [7, 2, 0, 4, 9]]


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
