"""The ONE registry of the compiled ops: a new op is added here (and gets its test_<op>.py).

Per op (:class:`OpInfo`): the schemas it registers under ``torch.ops.mta_ext`` (test_build.py),
``sample_inputs(device, dtype)`` (small argument tuples of the raw op, as extension-cpp's
tests: test_<op>.py feeds them to opcheck, gradcheck and the bad-input checks), its autocast
cases (test_autocast.py) and its fuzz case (test_fuzz_ops.py).

Seeding: every builder draws from torch's global RNG and Python's ``random``, both seeded by
the ``rng`` fixture (conftest.py: a fresh seed per run, printed; MTA_TEST_SEED replays it). The
fuzz cases take their own ``random.Random`` (test_fuzz_ops.py: MTA_FUZZ_SEED).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from op_helpers import _ranges, _units, tdev

import mta_ext
from mta_ext import reference


@dataclass(frozen=True)
class Sample:
    """One call of a raw op: ``torch.ops.mta_ext.<op>(*args)``; ``desc`` names the case."""

    args: tuple[Any, ...]
    desc: str = ""


@dataclass(frozen=True)
class OpInfo:
    name: str  # mta_ext.<name> and torch.ops.mta_ext.<name>
    schemas: tuple[str, ...]  # every public torch.ops.mta_ext schema of the op
    sample_inputs: Callable[[str, torch.dtype], list[Sample]]  # (device, dtype)
    autocast_cases: dict[str, Callable[[str], Callable[[], tuple[torch.Tensor, ...]]]]
    fuzz_case: Callable[[random.Random, torch.dtype], str]
    differentiable: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


def _seeded_random() -> random.Random:
    """A ``random.Random`` drawn from torch's global RNG (seeded by the ``rng`` fixture)."""
    return random.Random(int(torch.randint(0, 2**31 - 1, ()).item()))


# ============================================================================ segment_pool
# (M rows, D, N units, weights: None | "fp64" | "acc", max range length)
SEGMENT_POOL_SAMPLES = [
    *[
        (m, d, n, w, 6)
        for (m, d, n) in [(1, 1, 1), (9, 3, 6), (20, 5, 14), (6, 2, 0), (30, 8, 12)]
        for w in ("fp64", None)
    ],
    *[(12, 5, 7, w, 5) for w in ("acc", None)],
    *[(20, 6, 9, w, 6) for w in ("acc", None)],
]


def segment_pool_sample_inputs(device: str, dtype: torch.dtype) -> list[Sample]:
    """``(hidden [M, D] requiring grad, ranges [N, 2], weights [M] | None)`` on ``device``."""
    rng = _seeded_random()
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    out = []
    for m, d, n, wk, max_len in SEGMENT_POOL_SAMPLES:
        h = torch.randn(m, d, dtype=torch.float64).to(dtype).to(tdev(device)).requires_grad_()
        r = _ranges(rng, m, n, max_len=max_len).to(tdev(device))
        w = None
        if wk is not None:
            w = torch.rand(m, dtype=torch.float64).to(torch.float64 if wk == "fp64" else acc)
            w = w.to(tdev(device))
        out.append(Sample((h, r, w), f"M={m} D={d} N={n} weights={wk}"))
    return out


def _autocast_segment_pool(device: str, dt: torch.dtype):
    g = torch.Generator().manual_seed(1)
    h = torch.randn(12, 6, generator=g).to(device, dt).requires_grad_()
    ranges = torch.tensor([[0, 3], [2, 7], [7, 7], [9, 12]], device=device)
    w = torch.rand(12, generator=g).to(device)

    def run():
        out = mta_ext.segment_pool(h, ranges, w)
        return (out, *torch.autograd.grad(out.float().sum(), [h]))

    return run


# ============================================================================ token_salience
def token_salience_sample_inputs(device: str, dtype: torch.dtype) -> list[Sample]:
    """``(hidden [B, T, D], attention_mask [B, T], key_block)`` on ``device``."""
    from op_helpers import _random_mask

    rng = _seeded_random()
    dev = tdev(device)
    return [
        Sample(
            (torch.randn(2, 9, 5).to(dtype).to(dev), _random_mask(rng, 2, 9).long().to(dev), 0),
            "long mask",
        ),
        Sample((torch.randn(2, 9, 5).to(dtype).to(dev), _random_mask(rng, 2, 9).to(dev), 3)),
        Sample(
            (torch.randn(0, 4, 5).to(dtype).to(dev), torch.ones(0, 4, dtype=torch.long).to(dev), 0),
            "empty batch",
        ),
        Sample((torch.randn(2, 17, 8).to(dtype).to(dev), _random_mask(rng, 2, 17).to(dev), 0)),
    ]


def _autocast_token_salience(device: str, dt: torch.dtype):
    g = torch.Generator().manual_seed(2)
    h = torch.randn(2, 7, 16, generator=g).to(device, dt)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3], device=device)
    return lambda: (mta_ext.token_salience(h, mask),)


# ============================================================================ relational_loss
# (units per example, Ds, Dt, weights dtype: "same" as the units | "fp32")
RELATIONAL_LOSS_SAMPLES = [
    ([3, 0, 2], 6, 4, "same"),
    ([], 6, 4, "same"),
    ([2, 5], 6, 4, "same"),
    ([1], 5, 3, "same"),
    ([4], 5, 3, "same"),
    ([3, 0, 2], 5, 3, "same"),
    ([5, 1, 70], 6, 4, "fp32"),
    ([4, 6], 8, 5, "fp32"),
]


def relational_loss_sample_inputs(device: str, dtype: torch.dtype) -> list[Sample]:
    """``(u_student [N, Ds], u_teacher [N, Dt], unit_weights [N], cu_units [B+1])`` on
    ``device``; the unit vectors require grad."""
    rng = _seeded_random()
    out = []
    for sizes, ds, dt, wk in RELATIONAL_LOSS_SAMPLES:
        us, ut, w, cu = _units(rng, sizes, ds, dt, dtype, dtype)
        w = w.to(dtype if wk == "same" else torch.float32)
        dev = tdev(device)
        out.append(
            Sample(
                (us.to(dev).requires_grad_(), ut.to(dev).requires_grad_(), w.to(dev), cu.to(dev)),
                f"sizes={sizes} Ds={ds} Dt={dt} weights={wk}",
            )
        )
    return out


def _autocast_relational_loss(device: str, dt_s: torch.dtype, dt_t: torch.dtype):
    g = torch.Generator().manual_seed(0)
    us = torch.randn(9, 8, generator=g).to(device, dt_s).requires_grad_()
    ut = torch.randn(9, 5, generator=g).to(device, dt_t).requires_grad_()
    w = torch.rand(9, generator=g).to(device)
    cu = torch.tensor([0, 4, 4, 9], device=device)

    def run():
        loss = mta_ext.relational_loss(us, ut, w, cu)
        return (loss, *torch.autograd.grad(loss.float().sum(), [us, ut]))

    return run


# ============================================================================ row_cosine
# (n rows of p, M rows of h, D, rows: None | "perm" (distinct) | "repeat" (with repeats))
ROW_COSINE_SAMPLES = [
    (5, 5, 3, None),
    (0, 4, 3, "perm"),
    (6, 9, 4, "perm"),
    (7, 4, 5, "repeat"),
    (1, 1, 1, None),
    (4, 4, 0, None),
]


def row_cosine_inputs(n: int, m: int, d: int, dtype: torch.dtype, rows_kind: str | None):
    """``(p [n, D], h [M, D], rows [n] | None)`` on the CPU in float64 rounded to ``dtype``
    (``M = n`` without rows; ``rows_kind`` ``"perm"``: distinct rows, ``"repeat"``: rows drawn
    with repeats): random magnitudes per row, one zero row and one tiny row of ``p`` (norms
    below eps: the clamped branch; not in float16, where their gradients of about 1 / eps are
    beyond the type)."""
    if rows_kind is None:
        m = n
    p = torch.randn(n, d, dtype=torch.float64) * torch.rand(n, 1, dtype=torch.float64).mul(4).exp()
    if n >= 3 and d and dtype != torch.float16:  # fp16: a gradient of ~1/eps = 1e5 overflows
        p[0] = 0.0
        # norm 1e-7 whatever the row's scale and D: below eps by far more than gradcheck's
        # finite-difference steps, which must not cross the clamp's kink
        p[2] *= 1e-7 / p[2].norm().clamp_min(1e-300)
    h = torch.randn(m, d, dtype=torch.float64)
    rows = None
    if rows_kind == "perm":
        rows = torch.randperm(m)[:n]
    elif rows_kind == "repeat":
        rows = torch.randint(0, max(m, 1), (n,)) if m else torch.zeros(0, dtype=torch.long)
    return p.to(dtype), h.to(dtype), rows


def row_cosine_sample_inputs(device: str, dtype: torch.dtype) -> list[Sample]:
    """``(p [n, D], h [M, D], rows [n] | None, eps)`` on ``device`` from
    :func:`row_cosine_inputs`; ``p`` and ``h`` require grad."""
    dev = tdev(device)
    out = []
    for n, m, d, kind in ROW_COSINE_SAMPLES:
        p, h, rows = row_cosine_inputs(n, m, d, dtype, kind)
        p = p.to(dev).requires_grad_()
        h = h.to(dev).requires_grad_()
        out.append(
            Sample(
                (p, h, None if rows is None else rows.to(dev), 1e-5),
                f"n={n} M={m} D={d} rows={kind}",
            )
        )
    return out


def _autocast_row_cosine(device: str, dt: torch.dtype):
    g = torch.Generator().manual_seed(3)
    p = torch.randn(9, 16, generator=g).to(device, dt).requires_grad_()
    h = torch.randn(12, 16, generator=g).to(device, dt)
    rows = torch.tensor([0, 2, 3, 5, 6, 7, 8, 10, 11], device=device)

    def run():
        out = mta_ext.row_cosine(p, h, rows)
        return (out, *torch.autograd.grad(out.sum(), [p]))

    return run


# ============================================================================ fuzz cases
# Hostile random inputs against the float64 reference (test_fuzz_ops.py): every dtype,
# magnitudes from 1e-30 to 1e30 (fp16: 1e-3 to 1e3), non-contiguous layouts, empty / one-unit /
# ragged batches; each case also runs with 1 and 2 intra-op threads and must give the same bits.

# Unit roundoff of the accumulation type of each input dtype, and of the dtype itself.
U_ACC = {torch.float64: 2.0**-53}
U_ACC.update({d: 2.0**-24 for d in (torch.float32, torch.bfloat16, torch.float16)})
U_IN = {torch.float64: 2.0**-53, torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8}
U_IN[torch.float16] = 2.0**-11


def threads(fn, n: int):
    """``fn()`` with ``n`` intra-op threads."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return fn()
    finally:
        torch.set_num_threads(old)


def bitwise_equal(a, b) -> bool:
    """Same dtypes, shapes and bits (NaNs in the same places)."""
    a = a if isinstance(a, (list, tuple)) else [a]
    b = b if isinstance(b, (list, tuple)) else [b]
    return all(
        (x.dtype == y.dtype and x.shape == y.shape and torch.equal(x.reshape(-1), y.reshape(-1)))
        or (torch.isnan(x).equal(torch.isnan(y)) and torch.equal(x.nan_to_num(), y.nan_to_num()))
        for x, y in zip(a, b, strict=True)
    )


def rl_grads(us, ut, w, cu, g):
    """(loss, d(g*loss)/du_student, d(g*loss)/du_teacher) through the public op."""
    a = us.clone().requires_grad_(True)
    b = ut.clone().requires_grad_(True)
    loss = mta_ext.relational_loss(a, b, w, cu)
    ga, gb = torch.autograd.grad(loss * g, (a, b))
    return loss, ga, gb


def rl_truth(us, ut, w, cu, g):
    """:func:`rl_grads` through the float64 reference on the same (rounded) inputs."""
    a = us.double().requires_grad_(True)
    b = ut.double().requires_grad_(True)
    loss = reference.relational_loss(a, b, w.double(), cu)
    if not loss.requires_grad:
        return loss, torch.zeros_like(a), torch.zeros_like(b)
    ga, gb = torch.autograd.grad(loss * g, (a, b))
    return loss.detach(), ga, gb


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


def _fuzz_ranges(rng: random.Random, m: int, n: int) -> torch.Tensor:
    out = []
    for _ in range(n):
        if m == 0 or rng.random() < 0.1:
            s = rng.randint(0, m)
            out.append((s, s))
        else:
            s = rng.randrange(m)
            out.append((s, min(m, s + rng.randint(1, 4))))
    return torch.tensor(out, dtype=torch.long).reshape(n, 2)


def fuzz_segment_pool(rng: random.Random, dtype: torch.dtype) -> str:
    m, d, n = rng.choice([0, 1, rng.randint(2, 40)]), rng.randint(0, 20), rng.randint(0, 12)
    h = (torch.randn(m, d, dtype=torch.float64) * _magnitude(rng, dtype)).to(dtype)
    r = _fuzz_ranges(rng, m, n)
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

    one, two = threads(run, 1), threads(run, 2)
    assert bitwise_equal(one, two), "segment_pool: 1 vs 2 threads differ"
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


def fuzz_token_salience(rng: random.Random, dtype: torch.dtype) -> str:
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
    one = threads(lambda: mta_ext.token_salience(h, m), 1)
    two = threads(lambda: mta_ext.token_salience(h, m), 2)
    assert bitwise_equal(one, two), "token_salience: 1 vs 2 threads differ"
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


def fuzz_relational_loss(rng: random.Random, dtype: torch.dtype) -> str:
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
    one = threads(
        lambda: list(rl_grads(us, ut, w, cu, g)) if n else [mta_ext.relational_loss(us, ut, w, cu)],
        1,
    )
    two = threads(
        lambda: list(rl_grads(us, ut, w, cu, g)) if n else [mta_ext.relational_loss(us, ut, w, cu)],
        2,
    )
    assert bitwise_equal(one, two), "relational_loss: 1 vs 2 threads differ"
    if not n:
        assert one[0].item() == 0
        return "relational_loss"
    loss, gs, gt = one
    tl, ts, tt = rl_truth(us, ut, w, cu, g)
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


def fuzz_row_cosine(rng: random.Random, dtype: torch.dtype) -> str:
    n, m, d = rng.choice([0, 1, rng.randint(2, 30)]), rng.randint(1, 30), rng.randint(0, 40)
    scale = _magnitude(rng, dtype)
    p = (torch.randn(n, d, dtype=torch.float64) * scale).to(dtype)
    h = (torch.randn(m, d, dtype=torch.float64) * _magnitude(rng, dtype)).to(dtype)
    if n and rng.random() < 0.3:
        p[rng.randrange(n)] = 0.0  # a norm below eps: the clamped branch
    rows = torch.randint(0, m, (n,)) if rng.random() < 0.6 else None
    if rows is None:
        h = (torch.randn(n, d, dtype=torch.float64) * _magnitude(rng, dtype)).to(dtype)
    p, h = _layout(rng, p), _layout(rng, h)
    x = p.detach().clone().requires_grad_(True)
    g = torch.randn(n, dtype=torch.float64)

    def run():
        out = mta_ext.row_cosine(x, h, rows)
        (gx,) = torch.autograd.grad(out, x, g.to(out.dtype)) if n else (torch.zeros_like(x),)
        return [out.detach(), gx]

    one, two = threads(run, 1), threads(run, 2)
    assert bitwise_equal(one, two), "row_cosine: 1 vs 2 threads differ"
    out, gx = one
    pd, hd = p.double(), h.double()
    hr = hd if rows is None else hd[rows]
    np_, nh_ = pd.norm(dim=-1), hr.norm(dim=-1)
    if not (torch.isfinite(np_).all() and torch.isfinite(nh_).all()):
        return "row_cosine:outside"  # squared norms beyond float64 (stated contract)
    truth = reference.row_cosine(pd, hd, rows)
    # sums in float64 (relative error <= D roundings), then one rounding to the output type
    tol = 4 * U_ACC[dtype] + (8 + 4 * d) * 2.0**-53
    assert (out.double() - truth).abs().max().item() <= tol if n else True
    if n and d:
        pr = pd.clone().requires_grad_(True)
        (tg,) = torch.autograd.grad(reference.row_cosine(pr, hd, rows), pr, g)
        # |d cos / d p| <= 2 / max(|p|, eps): the error relative to that bound per row
        bound = (2 * g.abs() / np_.clamp_min(1e-5))[:, None]
        # float16 gradients below 2^-14 are subnormal: absolute steps of 2^-24
        sub = 2.0**-24 if dtype == torch.float16 else 0.0
        diff = ((gx.double() - tg).abs() - sub).clamp_min(0)
        # rows whose gradient may exceed the type (a zero row in float16: ~1/eps) are skipped
        fits = bound[:, 0] <= torch.finfo(dtype).max / 4
        err = (diff / bound.clamp_min(1e-300))[fits].max().item() if fits.any() else 0.0
        assert err <= 8 * U_IN[dtype] + (64 + 4 * d) * U_ACC[dtype], err
    return "row_cosine"


# ============================================================================ the registry
OPS: list[OpInfo] = [
    OpInfo(
        name="segment_pool",
        schemas=("segment_pool", "segment_pool_backward"),
        sample_inputs=segment_pool_sample_inputs,
        autocast_cases={
            "fp32": lambda d: _autocast_segment_pool(d, torch.float32),
            "bf16": lambda d: _autocast_segment_pool(d, torch.bfloat16),
        },
        fuzz_case=fuzz_segment_pool,
    ),
    OpInfo(
        name="token_salience",
        schemas=("token_salience",),
        sample_inputs=token_salience_sample_inputs,
        autocast_cases={
            "fp32": lambda d: _autocast_token_salience(d, torch.float32),
            "bf16": lambda d: _autocast_token_salience(d, torch.bfloat16),
        },
        fuzz_case=fuzz_token_salience,
        differentiable=False,
    ),
    OpInfo(
        name="relational_loss",
        schemas=("relational_loss", "relational_loss_and_grad", "relational_loss_backward"),
        sample_inputs=relational_loss_sample_inputs,
        autocast_cases={
            "fp32/bf16": lambda d: _autocast_relational_loss(d, torch.float32, torch.bfloat16),
            "bf16/fp32": lambda d: _autocast_relational_loss(d, torch.bfloat16, torch.float32),
            "fp32/fp32": lambda d: _autocast_relational_loss(d, torch.float32, torch.float32),
        },
        fuzz_case=fuzz_relational_loss,
    ),
    OpInfo(
        name="row_cosine",
        schemas=("row_cosine", "row_cosine_backward"),
        sample_inputs=row_cosine_sample_inputs,
        autocast_cases={
            "fp32": lambda d: _autocast_row_cosine(d, torch.float32),
            "bf16": lambda d: _autocast_row_cosine(d, torch.bfloat16),
        },
        fuzz_case=fuzz_row_cosine,
    ),
]
OP = {op.name: op for op in OPS}
