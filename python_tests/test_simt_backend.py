"""The SIMT backend itself: its execution model on purpose-built kernels (barriers, warp
collectives, wmma, the checks for what a GPU leaves undefined), the thread order of the shuffled
mode, and what it proves about the real kernels (every kernel gives the same bits in every thread
order; the device-built tile plan equals the host plan; the launches per op). The op tests run on
the "simt" device of op_helpers.DEVICES; the memory checks are in test_simt_memory.py."""

from __future__ import annotations

import collections

import pytest
import torch
from op_helpers import SIMT

import mta_ext
from mta_ext import _simt
from mta_ext._layout import relational_plan_sizes

ops = torch.ops.mta_ext
pytestmark = pytest.mark.skipif(not SIMT, reason="needs the SIMT backend (MTA_WITH_SIMT=ON)")
NONE = torch.zeros(0)


def selftest(name: str, blocks: int = 1, a=NONE, b=NONE, **mode) -> torch.Tensor:
    with _simt.enabled(**mode):
        return ops._simt_selftest(name, blocks, a, b)


# ---------------------------------------------------------------- the execution model


@pytest.mark.parametrize("seed", [None, 0, 1, 2])
def test_barrier_orders_shared_memory(seed):
    out = selftest("reverse", 3, shuffle_seed=seed).view(3, 64)
    want = torch.stack([1000 * b + torch.arange(63, -1, -1) for b in range(3)]).int()
    assert torch.equal(out, want)


@pytest.mark.parametrize("seed", [None, 0, 1])
def test_missing_barrier_is_a_visible_race(seed):
    # Without the barrier, a thread reads its mirror's slot before (or after) the mirror wrote
    # it: the result is not the reversal, in the fixed order and in every shuffled order.
    out = selftest("reverse_nosync", 2, shuffle_seed=seed).view(2, 64)
    want = torch.stack([1000 * b + torch.arange(63, -1, -1) for b in range(2)]).int()
    assert not torch.equal(out, want)


def test_shuffled_mode_changes_the_thread_order():
    fixed = {int(selftest("last_writer", 4)[b]) for b in range(4)}
    assert fixed == {255}  # thread 255 runs last in the fixed order
    seen = set()
    for seed in range(4):
        seen |= set(selftest("last_writer", 4, shuffle_seed=seed).tolist())
    assert len(seen) > 4  # different last writers per block and seed
    again = selftest("last_writer", 4, shuffle_seed=3)
    assert torch.equal(again, selftest("last_writer", 4, shuffle_seed=3))  # seeded: replayable


def test_warp_collectives():
    out = selftest("warp", shuffle_seed=5)
    lane = torch.arange(32)
    v = lane + 1
    assert (out[:, 0] == v.sum()).all()
    half = torch.where(lane < 16, v[:16].sum(), v[16:].sum())
    assert torch.equal(out[:, 1], half.int())
    odd = sum(1 << i for i in range(1, 32, 2))
    assert (out[:, 2] == torch.tensor(odd).int()).all()  # the ballot's bits, as int32
    assert (out[:, 3] == 6).all()
    down = torch.where(lane + 3 < 32, v + 3, v)  # past the end: the lane's own value
    assert torch.equal(out[:, 4], down.int())
    assert (out[:, 5] == 1).all() and (out[:, 6] == 1).all()


def test_wmma_matches_a_matmul():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(16, 16, generator=g).bfloat16()
    b = torch.randn(16, 16, generator=g).bfloat16()
    c = selftest("wmma", a=a, b=b)
    torch.testing.assert_close(c, a.float() @ b.float(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "name,match",
    [
        ("divergent_barrier", "threads of the block have exited"),
        ("exited_lane", "which has exited"),
        ("trap", r"__trap\(\) called by a kernel"),
        ("empty_grid", "has no block"),
    ],
)
def test_what_a_gpu_leaves_undefined_is_an_error(name, match):
    with pytest.raises(RuntimeError, match=match):
        selftest(name)
    # The backend is usable again after the error.
    assert torch.equal(selftest("reverse", 1).view(64), torch.arange(63, -1, -1).int())


def test_simt_is_off_outside_the_context():
    h = torch.randn(6, 4)
    r = torch.tensor([[0, 3], [2, 6]])
    _simt.reset_stats()
    mta_ext.segment_pool(h, r)
    assert _simt.stats()["launches"] == 0
    with _simt.enabled():
        mta_ext.segment_pool(h, r)
        with _simt.suspended():
            mta_ext.segment_pool(h, r)
    assert _simt.stats()["launches"] == 1
    with pytest.raises(RuntimeError, match="already active"), _simt.enabled(), _simt.enabled():
        pass


# ---------------------------------------------------------------- the real kernels


def _kernel_calls(dtype):
    """One call of every CUDA kernel path (both sides, fused and separate backward, the 16-bit
    tensor-core paths and the CUDA-core ones), returning all outputs."""
    g = torch.Generator().manual_seed(7)
    h = torch.randn(300, 72, generator=g).to(dtype)
    r = torch.randint(0, 300, (90, 2), generator=g).sort(1).values
    w = torch.rand(300, generator=g)
    go = torch.randn(90, 72, generator=g).to(dtype)
    hs = torch.randn(2, 130, 40, generator=g).to(dtype)
    m = torch.ones(2, 130, dtype=torch.bool)
    m[1, 90:] = False
    cu = torch.tensor([0, 3, 70, 200])
    us = torch.randn(200, 40, generator=g).to(dtype)
    ut = torch.randn(200, 72, generator=g).to(dtype)
    uw = torch.rand(200, generator=g)
    sizes = list(relational_plan_sizes(cu.tolist()))
    return [
        ops.segment_pool(h, r, w),
        ops.segment_pool_backward(go, r, w, 300),
        ops.segment_pool_backward(go, r, None, 300),
        ops.token_salience(hs, m, 0),
        ops.relational_loss(us, ut, uw, cu, plan_sizes=sizes),
        *ops.relational_loss_and_grad(us, ut, uw, cu, True, True, plan_sizes=sizes),
        *ops.relational_loss_backward(torch.ones(()), us, ut, uw, cu, True, True),
    ]


@pytest.mark.parametrize("sm", [90, 70])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_every_kernel_gives_the_same_bits_in_every_thread_order(dtype, sm):
    with _simt.enabled(sm=sm):
        fixed = _kernel_calls(dtype)
    for seed in (11, 12):
        with _simt.enabled(shuffle_seed=seed, sm=sm):
            shuffled = _kernel_calls(dtype)
        for a, b in zip(fixed, shuffled, strict=True):
            assert torch.equal(a, b)


CU_CASES = [[0], [0, 0], [0, 1], [0, 2], [0, 64], [0, 65], [0, 3, 70, 70, 200, 201], [0, 130, 131]]


@pytest.mark.parametrize("cu", CU_CASES, ids=str)
def test_device_built_plan_equals_the_host_plan(cu):
    n = cu[-1]
    tiles, rows, _ = ops._relational_loss_plan(torch.tensor(cu), n)
    sizes = list(relational_plan_sizes(cu))
    with _simt.enabled():
        dt, dr, bad = ops._relational_loss_plan_with_sizes(torch.tensor(cu), n, sizes)
    assert torch.equal(dt, tiles) and torch.equal(dr, rows) and int(bad) == 0
    ht, hr, hbad = ops._relational_loss_plan_with_sizes(torch.tensor(cu), n, sizes)  # host twin
    assert torch.equal(ht, tiles) and torch.equal(hr, rows) and int(hbad) == 0


@pytest.mark.parametrize(
    "cu,sizes",
    [
        ([0, 64], [1, 1, 4, 2]),
        ([0, 2], [2, 1, 4, 2]),
        ([0, 130], [0, 0, 0, 0]),
        ([0, 70, 140], [4, 3, 4900, 140]),
        ([0, 70, 140], [6, 4, 9800, 281]),
        ([1, 5], [1, 1, 16, 4]),
    ],
    ids=str,
)
def test_device_built_plan_with_wrong_sizes_equals_the_host_twin(cu, sizes):
    n = max(cu)
    with _simt.enabled():
        dev = ops._relational_loss_plan_with_sizes(torch.tensor(cu), n, sizes)
    host = ops._relational_loss_plan_with_sizes(torch.tensor(cu), n, sizes)
    for a, b in zip(dev, host, strict=True):
        assert torch.equal(a, b)
    assert int(dev[2]) == 1  # flagged


# Kernel launches + leaf ATen ops that do device work, per call (mixed bf16/fp32 inputs, two
# examples of 70 units): the fused row preparation replaced ~35 small ATen launches per call.
LAUNCH_BUDGET = {
    "relational_loss": 12,
    "relational_loss_and_grad": 15,
    "relational_loss_backward": 15,
}
_METADATA_OPS = {
    "aten::empty",
    "aten::empty_strided",
    "aten::view",
    "aten::as_strided",
    "aten::detach",
    "aten::alias",
    "aten::select",
    "aten::slice",
    "aten::narrow",
    "aten::reshape",
    "aten::_reshape_alias",
    "aten::unsqueeze",
    "aten::expand",
    "aten::t",
    "aten::transpose",
    "aten::resize_",
    "aten::lift_fresh",
    "aten::empty_like",
    "aten::contiguous",
    "aten::to",
    "aten::_to_copy",
    "aten::result_type",
    "aten::promote_types",
    "aten::zeros",
    "aten::ones",
    "aten::full",
    "aten::ones_like",
    "aten::zeros_like",
    "aten::item",
    "aten::_local_scalar_dense",
}


def _launches(fn) -> tuple[int, collections.Counter]:
    from torch.profiler import ProfilerActivity, profile

    with _simt.enabled():
        fn()
        _simt.reset_stats()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        kernels = _simt.stats()["launches"]
    aten = collections.Counter()
    for e in prof.events():
        if not e.name.startswith("aten::") or e.name in _METADATA_OPS:
            continue
        if any(ch.name.startswith("aten::") for ch in e.cpu_children):
            continue  # count leaves only
        p = e.cpu_parent
        while p is not None and not p.name.startswith("mta_ext::"):
            p = p.cpu_parent
        if p is not None:
            aten[e.name] += 1
    return kernels, aten


def test_launches_per_relational_loss_call():
    cu = torch.tensor([0, 70, 140])
    us, ut, w = torch.randn(140, 40).bfloat16(), torch.randn(140, 64), torch.rand(140)
    sizes = list(relational_plan_sizes(cu.tolist()))
    calls = {
        "relational_loss": lambda: ops.relational_loss(us, ut, w, cu, plan_sizes=sizes),
        "relational_loss_and_grad": lambda: ops.relational_loss_and_grad(
            us, ut, w, cu, True, True, plan_sizes=sizes
        ),
        "relational_loss_backward": lambda: ops.relational_loss_backward(
            torch.ones(()), us, ut, w, cu, True, True, plan_sizes=sizes
        ),
    }
    for name, fn in calls.items():
        kernels, aten = _launches(fn)
        total = kernels + sum(aten.values())
        print(f"{name}: {kernels} kernels + {sum(aten.values())} ATen ops {dict(aten)}")
        assert total <= LAUNCH_BUDGET[name], (name, kernels, dict(aten))
