"""Hostile inputs for the ops: reproducers of past wrong results, the non-finite contract, and a
seeded fuzz suite against ``mta_ext.reference``.

The fuzz cases draw every dtype, magnitudes from 1e-30 to 1e30 (fp16: 1e-3 to 1e3, its range),
non-contiguous layouts (transposed, expanded, strided), empty / one-unit / ragged batches. The
truth is the reference evaluated in float64 on the very (rounded) inputs the op sees; each
tolerance is derived from that float64 run (the magnitude of the logits, the a-priori gradient
bound) and the unit roundoff of the accumulation and output dtypes. Every case is also run with
1 and 2 intra-op threads and must give the same bits.

CI-sized by default (a few hundred cases, well under a minute); ``MTA_FUZZ=long`` runs >= 10,000
cases (``MTA_FUZZ_CASES`` overrides the count, ``MTA_FUZZ_SEED`` the seed).
"""

from __future__ import annotations

import math
import os
import random
import time

import pytest
import torch

import mta_ext
from mta_ext import reference

ops = torch.ops.mta_ext
FLOATS = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
LONG = os.environ.get("MTA_FUZZ") == "long"
CASES = int(os.environ.get("MTA_FUZZ_CASES", 12000 if LONG else 600))
SEED = int(os.environ.get("MTA_FUZZ_SEED", 20240611))
# Unit roundoff of the accumulation type of each input dtype, and of the dtype itself.
U_ACC = {torch.float64: 2.0**-53}
U_ACC.update({d: 2.0**-24 for d in (torch.float32, torch.bfloat16, torch.float16)})
U_IN = {torch.float64: 2.0**-53, torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8}
U_IN[torch.float16] = 2.0**-11


def _threads(fn, n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return fn()
    finally:
        torch.set_num_threads(old)


def _bitwise_equal(a, b) -> bool:
    a = a if isinstance(a, (list, tuple)) else [a]
    b = b if isinstance(b, (list, tuple)) else [b]
    return all(
        (x.dtype == y.dtype and x.shape == y.shape and torch.equal(x.reshape(-1), y.reshape(-1)))
        or (torch.isnan(x).equal(torch.isnan(y)) and torch.equal(x.nan_to_num(), y.nan_to_num()))
        for x, y in zip(a, b, strict=True)
    )


# ------------------------------------------------------------------------------ reproducers


def _rl_grads(us, ut, w, cu, g):
    a = us.clone().requires_grad_(True)
    b = ut.clone().requires_grad_(True)
    loss = mta_ext.relational_loss(a, b, w, cu)
    ga, gb = torch.autograd.grad(loss * g, (a, b))
    return loss, ga, gb


def _rl_truth(us, ut, w, cu, g):
    a = us.double().requires_grad_(True)
    b = ut.double().requires_grad_(True)
    loss = reference.relational_loss(a, b, w.double(), cu)
    if not loss.requires_grad:
        return loss, torch.zeros_like(a), torch.zeros_like(b)
    ga, gb = torch.autograd.grad(loss * g, (a, b))
    return loss.detach(), ga, gb


def test_relational_fp16_fused_gradient_does_not_overflow():
    # Small unit vectors: the gradient for an upstream 1 exceeds fp16's 65504 although the real
    # one (upstream 0.5) does not. It used to be stored in fp16 before scaling: inf.
    torch.manual_seed(0)
    us = (torch.randn(6, 4) * 1.5e-6).half()
    ut = torch.randn(6, 4).half()
    w, cu = torch.ones(6), torch.tensor([0, 6])
    _, rs, rt = _rl_truth(us, ut, w, cu, 1.0)
    big = max(rs.abs().max().item(), rt.abs().max().item())
    assert 65504 < big < 4 * 65504, big  # the case exercises the overflow
    _, gs, gt = _rl_grads(us, ut, w, cu, 0.25)
    _, rs, rt = _rl_truth(us, ut, w, cu, 0.25)
    assert torch.isfinite(gs).all() and torch.isfinite(gt).all()
    torch.testing.assert_close(gs.double(), rs, rtol=4e-3, atol=4e-3 * big)


def test_relational_fp16_gradient_under_loss_scaling():
    # GradScaler starts at 2^16: the g = 1 gradient used to underflow to fp16 zeros first.
    torch.manual_seed(1)
    us = torch.randn(200, 16).half()
    ut = torch.randn(200, 16).half()
    w, cu = torch.rand(200), torch.tensor([0, 200])
    _, gs, gt = _rl_grads(us, ut, w, cu, 65536.0)
    _, rs, rt = _rl_truth(us, ut, w, cu, 65536.0)
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


def test_token_salience_two_tokens_width_one():
    # std = 0 (D = 1): logits ~4e10; the row maximum must give exp(0) exactly.
    for pair in ((1.7, 2.3), (0.5, 3.0)):
        h = torch.tensor([[[pair[0]], [pair[1]]]])
        got = mta_ext.token_salience(h, torch.ones(1, 2, dtype=torch.bool))
        assert got.tolist() == [[0.5, 0.5]]


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
    one = _threads(lambda: _rl_grads(us, ut, w, cu, 1.0), 1)
    two = _threads(lambda: _rl_grads(us, ut, w, cu, 1.0), 2)
    assert _bitwise_equal(list(one), list(two))


def test_relational_identical_inputs_give_exact_zero():
    torch.manual_seed(6)
    for dtype in FLOATS:
        u = torch.randn(70, 9).to(dtype)
        assert mta_ext.relational_loss(u, u.clone(), torch.rand(70), torch.tensor([0, 70])) == 0


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
    _, cs, ct = _rl_grads(us, ut, w, cu, 1.0)
    us[1, 0] = bad
    loss, gs, gt = _rl_grads(us, ut, w, cu, 1.0)
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


# ------------------------------------------------------------------------------ fuzz


def _magnitude(rng: random.Random, dtype: torch.dtype) -> float:
    lo, hi = (-3, 3) if dtype == torch.float16 else (-30, 30)
    return 10.0 ** rng.uniform(lo, hi)


def _layout(rng: random.Random, x: torch.Tensor) -> torch.Tensor:
    """The same values in a random memory layout (contiguous, transposed, strided, expanded)."""
    kind = rng.randrange(4)
    if kind == 1 and x.dim() == 2:
        return x.t().contiguous().t()
    if kind == 2:
        big = torch.empty((x.shape[0] * 2, *tuple(x.shape[1:])), dtype=x.dtype)
        big[::2] = x
        return big[::2]
    if kind == 3 and x.shape[0] > 0:
        return x[:1].expand_as(x) if rng.random() < 0.3 else x
    return x


def _ranges(rng: random.Random, m: int, n: int) -> torch.Tensor:
    out = []
    for _ in range(n):
        if m == 0 or rng.random() < 0.1:
            s = rng.randint(0, m)
            out.append((s, s))
        else:
            s = rng.randrange(m)
            out.append((s, min(m, s + rng.randint(1, 4))))
    return torch.tensor(out, dtype=torch.long).reshape(n, 2)


def _case_segment_pool(rng: random.Random, dtype: torch.dtype) -> str:
    m, d, n = rng.choice([0, 1, rng.randint(2, 40)]), rng.randint(0, 20), rng.randint(0, 12)
    h = (torch.randn(m, d, dtype=torch.float64) * _magnitude(rng, dtype)).to(dtype)
    r = _ranges(rng, m, n)
    w = None
    if rng.random() < 0.7:
        wd = rng.choice([torch.float32, torch.float64])
        w = (torch.rand(m, dtype=torch.float64) * _magnitude(rng, torch.float32)).to(wd)
        if m and rng.random() < 0.2:
            w[rng.randrange(m)] = 0.0
    h = _layout(rng, h)
    x = h.detach().clone().requires_grad_(True)
    g = torch.randn(n, d, dtype=torch.float64).to(dtype)

    def run():
        out = mta_ext.segment_pool(x, r, w)
        (gx,) = torch.autograd.grad(out, x, g) if out.numel() else (torch.zeros_like(x),)
        return [out.detach(), gx]

    one, two = _threads(run, 1), _threads(run, 2)
    assert _bitwise_equal(one, two), "segment_pool: 1 vs 2 threads differ"
    out, gx = one
    truth = reference.segment_pool(h.double(), r, None if w is None else w.double())
    scale = h.double().abs().amax(dim=1).max().item() if h.numel() else 0.0
    tol = (4 * U_IN[dtype] + 16 * U_ACC[dtype]) * scale + 1e-300
    assert (out.double() - truth).abs().max().item() <= tol if out.numel() else True
    hd = h.double().requires_grad_(True)
    if n and d and m:
        (tg,) = torch.autograd.grad(
            reference.segment_pool(hd, r, None if w is None else w.double()), hd, g.double()
        )
        gs = g.double().abs().max().item()
        assert (gx.double() - tg).abs().max().item() <= (
            4 * U_IN[dtype] + 16 * U_ACC[dtype]
        ) * gs * 4
    return "segment_pool"


def _case_token_salience(rng: random.Random, dtype: torch.dtype) -> str:
    b, t, d = (
        rng.randint(0, 3),
        rng.choice([0, 1, 2, rng.randint(3, 12)]),
        rng.choice([1, 2, rng.randint(3, 24)]),
    )
    h = (torch.randn(b, t, d, dtype=torch.float64) * _magnitude(rng, dtype)).to(dtype)
    if rng.random() < 0.2 and b * t:
        h = h[:, :1].expand_as(h).clone() + 0  # identical rows: logits all equal
    m = torch.rand(b, t) < 0.8
    if rng.random() < 0.5:
        h = h.transpose(1, 2).contiguous().transpose(1, 2)
    one = _threads(lambda: mta_ext.token_salience(h, m), 1)
    two = _threads(lambda: mta_ext.token_salience(h, m), 2)
    assert _bitwise_equal(one, two), "token_salience: 1 vs 2 threads differ"
    hd = h.double()
    std = hd.std(dim=-1, keepdim=True) if d > 1 and hd.numel() else torch.zeros_like(hd)
    hn = hd / (std + 1e-5)
    logits = (hn @ hn.transpose(1, 2)).abs().max().item() / math.sqrt(d) if hd.numel() else 0.0
    limit = 1e300 if dtype == torch.float64 else 1e36
    if not logits < limit:
        return "token_salience:outside"  # logits beyond the accumulation type (stated contract)
    truth = reference.token_salience(hd, m).double()
    tol = 64 * U_ACC[dtype] * max(1.0, logits) + 1e-7
    assert (one.double() - truth).abs().max().item() <= tol if one.numel() else True
    return "token_salience"


def _case_relational(rng: random.Random, dtype: torch.dtype) -> str:
    sizes = [rng.choice([0, 1, 2, rng.randint(3, 9)]) for _ in range(rng.randint(0, 4))]
    n, ds, dt = sum(sizes), rng.randint(1, 12), rng.randint(1, 12)
    cu = torch.tensor(
        [0, *torch.tensor(sizes, dtype=torch.long).cumsum(0).tolist()], dtype=torch.long
    )
    us = (torch.randn(n, ds, dtype=torch.float64) * _magnitude(rng, dtype)).to(dtype)
    ut = (torch.randn(n, dt, dtype=torch.float64) * _magnitude(rng, dtype)).to(dtype)
    wd = rng.choice([torch.float32, dtype])
    w = (torch.rand(n, dtype=torch.float64) * _magnitude(rng, wd)).to(wd)
    if rng.random() < 0.3:  # weights spread over orders of magnitude (cancellation in sum w w)
        k = 3 if wd == torch.float16 else 8
        w = (
            torch.rand(n, dtype=torch.float64)
            * 10 ** (torch.rand(n, dtype=torch.float64) * 2 * k - k)
        ).to(wd)
    if n and rng.random() < 0.2:
        w[rng.randrange(n)] = 0.0
    us, ut = _layout(rng, us), _layout(rng, ut)
    g = rng.choice([1.0, 0.5, 2.0**16, 1e-3])
    one = _threads(
        lambda: (
            list(_rl_grads(us, ut, w, cu, g)) if n else [mta_ext.relational_loss(us, ut, w, cu)]
        ),
        1,
    )
    two = _threads(
        lambda: (
            list(_rl_grads(us, ut, w, cu, g)) if n else [mta_ext.relational_loss(us, ut, w, cu)]
        ),
        2,
    )
    assert _bitwise_equal(one, two), "relational_loss: 1 vs 2 threads differ"
    if not n:
        assert one[0].item() == 0
        return "relational_loss"
    loss, gs, gt = one
    tl, ts, tt = _rl_truth(us, ut, w, cu, g)
    u = U_ACC[dtype] if wd != torch.float64 else U_ACC[torch.float64]
    if dtype == torch.float64 or wd == torch.float64:
        u = 2.0**-53
    d = max(ds, dt)
    assert abs(loss.double().item() - tl.item()) <= 64 * u * (1 + d) + 1e-300
    # A-priori gradient bound: |dL/du_i| <= 8 g W_i sum_{j != i} W_j / (Z max(|u_i|, 1e-12)).
    wq = w.double() / w.double().max().clamp_min(1e-300)
    bound = 0.0
    z = 0.0
    for b in range(len(sizes)):
        a, e = cu[b].item(), cu[b + 1].item()
        if e - a >= 2:
            z += (wq[a:e].sum() ** 2 - (wq[a:e] ** 2).sum()).item()
    for side in (us, ut):
        nrm = side.double().norm(dim=1).clamp_min(1e-12)
        for b in range(len(sizes)):
            a, e = cu[b].item(), cu[b + 1].item()
            if e - a >= 2 and z > 0:
                tot = wq[a:e].sum()
                bnd = (
                    8
                    * g
                    * wq[a:e]
                    * (tot - wq[a:e])
                    / (max(z, 1e-5 / w.double().max().item() ** 2) * nrm[a:e])
                )
                bound = max(bound, bnd.max().item())
    for got, ref, din in ((gs, ts, us.dtype), (gt, tt, ut.dtype)):
        if ref.numel() == 0 or bound == 0 or not math.isfinite(bound):
            continue
        if bound > torch.finfo(din).max / 4:
            continue  # the gradient itself may not be representable in the input dtype
        err = (got.double() - ref).abs().max().item()
        tiny = torch.finfo(din).tiny * 4 if din != torch.bfloat16 else 1e-37
        if din == torch.float16:
            tiny = 2.0**-22
        assert err <= (4 * U_IN[din] + 256 * u * (1 + d)) * bound + tiny, (err, bound)
    return "relational_loss"


def test_fuzz_ops():
    rng = random.Random(SEED)
    torch.manual_seed(SEED)
    counts: dict[str, int] = {}
    t0 = time.perf_counter()
    cases = [_case_segment_pool, _case_token_salience, _case_relational]
    for i in range(CASES):
        fn, dtype = cases[i % 3], FLOATS[(i // 3) % 4]
        state = rng.getstate()
        try:
            kind = fn(rng, dtype)
        except AssertionError as e:
            rng.setstate(state)
            raise AssertionError(f"fuzz case {i} ({fn.__name__}, {dtype}, seed {SEED}): {e}") from e
        key = f"{kind}/{str(dtype).removeprefix('torch.')}"
        counts[key] = counts.get(key, 0) + 1
    print(f"fuzz_ops: {CASES} cases in {time.perf_counter() - t0:.1f} s, seed {SEED}: {counts}")
