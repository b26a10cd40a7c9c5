"""Hostile inputs for the ops: reproducers of past wrong results, the non-finite contract, and a
seeded fuzz suite against ``mta_ext.reference``.

The fuzz cases (one per op: ``op_registry.OPS``) draw every dtype, magnitudes from 1e-30 to
1e30 (fp16: 1e-3 to 1e3, its range), non-contiguous layouts (transposed, expanded, strided),
empty / one-unit / ragged batches. The truth is the reference evaluated in float64 on the very
(rounded) inputs the op sees; each tolerance is derived from that float64 run (the magnitude of
the logits, the a-priori gradient bound) and the unit roundoff of the accumulation and output
dtypes. Every case is also run with 1 and 2 intra-op threads and must give the same bits.

CI-sized by default (a few hundred cases, well under a minute); ``MTA_FUZZ=long`` runs >= 10,000
cases (``MTA_FUZZ_CASES`` overrides the count, ``MTA_FUZZ_SEED`` the seed).
"""

from __future__ import annotations

import os
import random
import time

import pytest
import torch
from op_helpers import DEVICES, _units, tdev
from op_registry import OPS, bitwise_equal, rl_grads, rl_truth, threads

import mta_ext
from mta_ext import reference

ops = torch.ops.mta_ext
FLOATS = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
LONG = os.environ.get("MTA_FUZZ") == "long"
CASES = int(os.environ.get("MTA_FUZZ_CASES", 12000 if LONG else 600))
SEED = int(os.environ.get("MTA_FUZZ_SEED", 20240611))


# ------------------------------------------------------------------------------ reproducers


def test_relational_fp16_fused_gradient_does_not_overflow():
    # Small unit vectors: the gradient for an upstream 1 exceeds fp16's 65504 although the real
    # one (upstream 0.5) does not. It used to be stored in fp16 before scaling: inf.
    torch.manual_seed(0)
    us = (torch.randn(6, 4) * 1.5e-6).half()
    ut = torch.randn(6, 4).half()
    w, cu = torch.ones(6), torch.tensor([0, 6])
    _, rs, rt = rl_truth(us, ut, w, cu, 1.0)
    big = max(rs.abs().max().item(), rt.abs().max().item())
    assert 65504 < big < 4 * 65504, big  # the case exercises the overflow
    _, gs, gt = rl_grads(us, ut, w, cu, 0.25)
    _, rs, rt = rl_truth(us, ut, w, cu, 0.25)
    assert torch.isfinite(gs).all() and torch.isfinite(gt).all()
    torch.testing.assert_close(gs.double(), rs, rtol=4e-3, atol=4e-3 * big)


def test_relational_fp16_gradient_under_loss_scaling():
    # GradScaler starts at 2^16: the g = 1 gradient used to underflow to fp16 zeros first.
    torch.manual_seed(1)
    us = torch.randn(200, 16).half()
    ut = torch.randn(200, 16).half()
    w, cu = torch.rand(200), torch.tensor([0, 200])
    _, gs, gt = rl_grads(us, ut, w, cu, 65536.0)
    _, rs, rt = rl_truth(us, ut, w, cu, 65536.0)
    for got, ref in ((gs, rs), (gt, rt)):
        assert ((got == 0) & (ref != 0)).sum() == 0
        rel = ((got.double() - ref).abs() / ref.abs().max()).max().item()
        assert rel < 2e-3, rel


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_relational_pair_weight_sum_has_no_cancellation(dtype):
    torch.manual_seed(2)
    us, ut = torch.randn(2, 4, dtype=dtype), torch.randn(2, 4, dtype=dtype)
    w, cu = torch.tensor([1e4, 1e-4], dtype=dtype), torch.tensor([0, 2])
    got = mta_ext.relational_loss(us, ut, w, cu)
    # Two units: the loss is (cS - cT)^2 of the one pair, whatever the weights.
    a = torch.nn.functional.normalize(us.double(), dim=1)
    b = torch.nn.functional.normalize(ut.double(), dim=1)
    want = ((a[0] @ a[1]) - (b[0] @ b[1])) ** 2
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_relational_huge_and_tiny_magnitudes(dtype):
    torch.manual_seed(3)
    us, ut = torch.randn(5, 3, dtype=dtype), torch.randn(5, 3, dtype=dtype)
    w, cu = torch.rand(5, dtype=torch.float32), torch.tensor([0, 2, 5])
    base = mta_ext.relational_loss(us, ut, w, cu).double()
    tol = {"rtol": 1e-5, "atol": 1e-6}
    for s in (1e-30, 1e30):  # powers of ten: the rounded inputs differ, compare loosely for bf16
        got = mta_ext.relational_loss(us * s, ut / s, w, cu).double()
        ref = reference.relational_loss((us * s).double(), (ut / s).double(), w.double(), cu)
        torch.testing.assert_close(got, ref, **tol)
    # width 1 and |u| > 1.8e19: cosines are +-1, not 0.
    u = torch.tensor([[2e19], [-3e19], [1e19]], dtype=dtype)
    got = mta_ext.relational_loss(
        u, torch.ones(3, 1, dtype=dtype), torch.ones(3), cu[:1].new_tensor([0, 3])
    )
    torch.testing.assert_close(got.double(), torch.tensor(8 / 3, dtype=torch.float64), **tol)
    # weights of 1e30: the loss is invariant under scaling the weights.
    got = mta_ext.relational_loss(us, ut, torch.full((5,), 1e30), cu)
    torch.testing.assert_close(
        got.double(), mta_ext.relational_loss(us, ut, torch.ones(5), cu).double(), **tol
    )
    del base


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_token_salience_huge_hidden_states(dtype):
    torch.manual_seed(4)
    h = torch.randn(2, 6, 8, dtype=dtype)
    m = torch.ones(2, 6, dtype=torch.bool)
    base = mta_ext.token_salience(h, m)
    for s in (2.0**40, 2.0**70):  # powers of two: the same rounded inputs, scaled (std >> 1e-5)
        got = mta_ext.token_salience(h * s, m)
        torch.testing.assert_close(got, base, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_segment_pool_huge_weights_and_values(dtype):
    h = torch.tensor([[1e30, -2e30], [3e30, 4e30], [5.0, 6.0]], dtype=dtype)
    w = torch.tensor([1e30, 1e30, 1e-30], dtype=dtype)
    r = torch.tensor([[0, 2], [1, 3], [2, 3]])
    x = h.clone().requires_grad_(True)
    out = mta_ext.segment_pool(x, r, w)
    # Unit 2's weight is below the 1e-5 clamp of the denominator: 1e-30 * h / 1e-5.
    want = torch.tensor([[2e30, 1e30], [3e30, 4e30], [5e-25, 6e-25]], dtype=torch.float64)
    torch.testing.assert_close(out.double(), want, rtol=1e-6, atol=0)
    (g,) = torch.autograd.grad(out.sum(), x)
    assert torch.isfinite(g).all()
    want_g = torch.tensor([[0.5, 0.5], [1.5, 1.5], [1e-25, 1e-25]], dtype=torch.float64)
    torch.testing.assert_close(g.double(), want_g, rtol=1e-6, atol=0)


def test_relational_fp64_gradients_thread_independent():
    torch.manual_seed(5)
    cu = torch.tensor([0, 100, 250, 260, 400])
    us = torch.randn(400, 128, dtype=torch.float64)
    ut = torch.randn(400, 256, dtype=torch.float64)
    w = torch.rand(400, dtype=torch.float64)
    one = threads(lambda: rl_grads(us, ut, w, cu, 1.0), 1)
    two = threads(lambda: rl_grads(us, ut, w, cu, 1.0), 2)
    assert bitwise_equal(list(one), list(two))


# ------------------------------------------------------------------------------ non-finite inputs
# Contract: non-finite values in hidden states / unit vectors propagate (no check, no host sync):
# segment_pool: out[k, d] is non-finite for every unit k containing a token t with a non-finite
# hidden[t, d] (even when w_t = 0), every other output is unaffected; token_salience: every valid
# weight of an example with a non-finite hidden value in a valid token is NaN, padding tokens and
# other examples are unaffected; relational_loss: the loss is NaN, the gradient rows of the
# examples holding a non-finite unit are NaN, the other examples' gradient rows are unaffected.
# Non-finite or negative weights are rejected with a ValueError naming the argument.


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_segment_pool_non_finite_propagates(bad):
    h = torch.randn(5, 3)
    r = torch.tensor([[0, 2], [1, 3], [3, 5]])
    w = torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0])
    clean = mta_ext.segment_pool(h, r, w)
    h[1, 2] = bad  # token 1 (weight 0) is in units 0 and 1
    out = mta_ext.segment_pool(h, r, w)
    assert not torch.isfinite(out[0, 2]) and not torch.isfinite(out[1, 2])
    keep = torch.ones_like(out, dtype=torch.bool)
    keep[0, 2] = keep[1, 2] = False
    assert torch.equal(out[keep], clean[keep])


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_token_salience_non_finite_propagates(bad):
    h = torch.randn(3, 5, 4)
    m = torch.ones(3, 5, dtype=torch.bool)
    m[1, 4] = False
    clean = mta_ext.token_salience(h, m)
    h[0, 2, 1] = bad  # valid token of example 0
    h[1, 4, 0] = bad  # padding token of example 1: ignored
    out = mta_ext.token_salience(h, m)
    assert torch.isnan(out[0]).all()
    assert torch.equal(out[1:], clean[1:])


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_relational_non_finite_propagates(bad):
    torch.manual_seed(7)
    us, ut = torch.randn(7, 4), torch.randn(7, 5)
    w, cu = torch.rand(7), torch.tensor([0, 3, 7])
    _, cs, ct = rl_grads(us, ut, w, cu, 1.0)
    us[1, 0] = bad
    loss, gs, gt = rl_grads(us, ut, w, cu, 1.0)
    assert torch.isnan(loss)
    assert torch.isnan(gs[:3]).all() and torch.isnan(gt[:3]).all()
    assert torch.isfinite(gs[3:]).all() and torch.isfinite(gt[3:]).all()
    # The other example is unchanged, bit for bit (Z only depends on the finite weights).
    assert torch.equal(gs[3:], cs[3:]) and torch.equal(gt[3:], ct[3:])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0])
def test_non_finite_weights_rejected(bad):
    w = torch.ones(4)
    w[2] = bad
    with pytest.raises(ValueError, match="weights"):
        mta_ext.segment_pool(torch.randn(4, 2), torch.tensor([[0, 4]]), w)
    with pytest.raises(ValueError, match="unit_weights"):
        mta_ext.relational_loss(torch.randn(4, 2), torch.randn(4, 2), w, torch.tensor([0, 4]))


@pytest.mark.parametrize("device", DEVICES)
def test_non_finite_inputs_propagate_on_device(rng, device):
    # The contract above, through each op's kernels on every device (no host check on a device:
    # the values propagate).
    dev = tdev(device)
    h = torch.randn(3, 70, 8)
    m = torch.ones(3, 70, dtype=torch.bool)
    clean = ops.token_salience(h.to(dev), m.to(dev), 0).cpu()
    h[0, 5, 2] = float("nan")
    out = ops.token_salience(h.to(dev), m.to(dev), 0).cpu()
    assert torch.isnan(out[0]).all() and torch.equal(out[1:], clean[1:])
    us, ut, w, cu = _units(rng, [9, 70], 12, 10, torch.float32, torch.float32)
    us[2, 1] = float("inf")
    loss = ops.relational_loss(us.to(dev), ut.to(dev), w.to(dev), cu.to(dev))
    assert torch.isnan(loss).item()
    hp = torch.randn(6, 16)
    hp[1, 3] = float("nan")
    pooled = ops.segment_pool(hp.to(dev), torch.tensor([[0, 2], [2, 6]], device=dev), None).cpu()
    assert torch.isnan(pooled[0, 3]) and torch.isfinite(pooled[1]).all()


# ------------------------------------------------------------------------------ fuzz


def test_fuzz_ops():
    rng = random.Random(SEED)
    torch.manual_seed(SEED)
    counts: dict[str, int] = {}
    t0 = time.perf_counter()
    cases = [op.fuzz_case for op in OPS]
    for i in range(CASES):
        fn, dtype = cases[i % len(cases)], FLOATS[(i // len(cases)) % 4]
        state = rng.getstate()
        try:
            kind = fn(rng, dtype)
        except AssertionError as e:
            rng.setstate(state)
            raise AssertionError(f"fuzz case {i} ({fn.__name__}, {dtype}, seed {SEED}): {e}") from e
        key = f"{kind}/{str(dtype).removeprefix('torch.')}"
        counts[key] = counts.get(key, 0) + 1
    print(f"fuzz_ops: {CASES} cases in {time.perf_counter() - t0:.1f} s, seed {SEED}: {counts}")
