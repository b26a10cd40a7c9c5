"""The CUDA path never waits for the host (needs a GPU; skipped without one).

Run by benchmarks/gpu_check.sh. On a real ``Alignment`` moved with ``.to("cuda")``:
* ``torch.cuda.set_sync_debug_mode("error")`` around a full structural_loss / MTALoss forward +
  backward: any host sync (``.item()``, a blocking copy, ``nonzero``...) raises;
* the same step captured with ``torch.cuda.graph`` replays bit-identically to eager, also after
  new values are copied into the captured inputs;
* ``torch.compile(mode="reduce-overhead")`` (CUDA graphs through inductor) runs and matches eager.
"""

from __future__ import annotations

import pytest
import torch
from sync_helpers import SCHEDULE, hidden_states, real_alignment
from torch import nn

import mta_ext

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and mta_ext.build_info()["cuda"]),
    reason="needs a CUDA device and a CUDA build",
)

DS, DT = 16, 24


def _setup(weighting="salience", dtype=torch.float32, seed=0):
    al = real_alignment().to("cuda")
    s_hs, t_hs = hidden_states(al, device="cuda", dtype=dtype, seed=seed, ds=DS, dt=DT)
    torch.manual_seed(seed)
    projs = nn.ModuleList(nn.Linear(DS, DT) for _ in SCHEDULE).to("cuda", dtype)
    logits = None
    if weighting == "entropy":
        B, Tt = al.teacher["input_ids"].shape
        g = torch.Generator().manual_seed(seed)
        logits = torch.randn(B, Tt, 40, generator=g).to("cuda", dtype)
    return al, s_hs, t_hs, projs, logits


def _loss(al, s_hs, t_hs, projs, logits, weighting):
    return mta_ext.structural_loss(
        s_hs,
        t_hs,
        al,
        SCHEDULE,
        projectors=projs,
        weighting=weighting,
        teacher_logits=logits,
    )


def _used(s_hs):
    return [s_hs[p[1]] for p in SCHEDULE]


@pytest.mark.parametrize("weighting", ["salience", "uniform", "entropy"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_structural_loss_fwd_bwd_takes_no_host_sync(weighting, dtype):
    al, s_hs, t_hs, projs, logits = _setup(weighting, dtype)
    assert not mta_ext.debug_enabled()
    _loss(al, s_hs, t_hs, projs, logits, weighting).backward()  # warm-up (handles, allocator)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = _loss(al, s_hs, t_hs, projs, logits, weighting)
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(loss).item()


def test_mtaloss_fwd_bwd_takes_no_host_sync():
    al, s_hs, t_hs, _, _ = _setup()
    loss_fn = mta_ext.MTALoss(SCHEDULE, student_hidden_size=DS, teacher_hidden_size=DT).cuda()
    loss_fn(s_hs, t_hs, al).backward()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss_fn(s_hs, t_hs, al).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_raw_ops_without_host_metadata_sync_as_documented():
    # The counter-proof: a plain-dict layout (no host metadata) makes the ops compute it, a
    # host sync the sync debug mode reports.
    al, s_hs, t_hs, projs, _ = _setup()
    plain = {
        g: {k: getattr(lay, k) for k in ("cu_units", "teacher_ranges", "student_ranges")}
        for g, lay in al.units.items()
    }
    al_plain = mta_ext.Alignment(al.texts, al.teacher, al.student, plain)
    _loss(al_plain, s_hs, t_hs, projs, None, "salience").backward()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with pytest.raises(RuntimeError, match="synchroniz"):
            _loss(al_plain, s_hs, t_hs, projs, None, "salience").backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_cuda_graph_capture_replays_bit_identically():
    al, s_hs, t_hs, projs, _ = _setup()
    used = _used(s_hs)

    def step():
        loss = _loss(al, s_hs, t_hs, projs, None, "salience")
        grads = torch.autograd.grad(loss, used)
        return loss, grads

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        g_loss, g_grads = step()
    for seed in (0, 1):
        if seed:  # new values in the captured inputs
            gen = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                for h in (*s_hs, *t_hs):
                    h.copy_(torch.randn(h.shape, generator=gen).to(h))
        graph.replay()
        torch.cuda.synchronize()
        e_loss, e_grads = step()
        assert torch.equal(g_loss, e_loss)
        for a, b in zip(g_grads, e_grads, strict=True):
            assert torch.equal(a, b)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(g_loss, e_loss)


def test_torch_compile_reduce_overhead_runs():
    al, s_hs, t_hs, projs, _ = _setup()
    used = _used(s_hs)

    def step(s, t):
        loss = _loss(al, s, t, projs, None, "salience")
        return loss, torch.autograd.grad(loss, [s[p[1]] for p in SCHEDULE])

    compiled = torch.compile(step, mode="reduce-overhead")
    e_loss, e_grads = step(s_hs, t_hs)
    for _ in range(3):
        c_loss, c_grads = compiled(s_hs, t_hs)
        torch.cuda.synchronize()
    torch.testing.assert_close(c_loss, e_loss, rtol=1e-5, atol=1e-6)
    for a, b in zip(c_grads, e_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert len(used) == len(c_grads)
