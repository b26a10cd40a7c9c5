"""The sync-free training path, executed by the CUDA kernels (SIMT backend): structural_loss on
real alignments with their host metadata takes no value check and no host-metadata fallback
(the counters of common/debug.h), and computes what the CPU kernels compute. Cases the
simulated test (test_no_host_sync.py, CPU kernels) does not reach: 70-200 units per example
(several tiles per example: off-diagonal tiles, column partials), a no-grad forward, the
token-level Hid path, fp16 and bf16 hidden states."""

from __future__ import annotations

import pytest
import torch
from op_helpers import SIMT
from sync_helpers import SCHEDULE, _chunks, _encode, _spans, _words, hidden_states

import mta_ext
from mta_ext import _simt

_ops = torch.ops.mta_ext
pytestmark = pytest.mark.skipif(not SIMT, reason="needs the SIMT backend (MTA_WITH_SIMT=ON)")

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron".split()


def _long_texts(n_words: list[int]) -> list[str]:
    return [
        " ".join(WORDS[(i * 7 + b) % len(WORDS)] for i in range(n)) for b, n in enumerate(n_words)
    ]


def _alignment(texts: list[str], shared: bool) -> mta_ext.Alignment:
    student = _encode(texts, _words if shared else _chunks)
    return mta_ext.align_encoded(texts, _encode(texts, _words), student, [_spans(t) for t in texts])


def _loss(al, dtype, *, grad=True, hid="auto", seed=0):
    s_hs, t_hs = hidden_states(al, dtype=dtype, seed=seed)
    torch.manual_seed(0)
    projs = [torch.nn.Linear(16, 24).to(dtype) for _ in SCHEDULE]
    if not grad:
        with torch.no_grad():
            return mta_ext.structural_loss(s_hs, t_hs, al, SCHEDULE, projectors=projs, hid=hid), []
    loss = mta_ext.structural_loss(s_hs, t_hs, al, SCHEDULE, projectors=projs, hid=hid)
    loss.backward()
    return loss.detach(), [h.grad for h in s_hs if h.grad is not None]


@pytest.fixture
def counters():
    was = mta_ext.debug_enabled()
    mta_ext.set_debug(False)
    _ops._reset_sync_counters()
    yield lambda: tuple(_ops._sync_counters())
    mta_ext.set_debug(was)


CASES = [
    # (words per example, shared tokenizer, dtype, with gradients)
    ([140, 200, 3], False, torch.float32, True),  # 70-200 word units per example
    ([150, 90], True, torch.float32, True),  # token-level Hid (one tokenizer)
    ([140, 70], False, torch.float32, False),  # forward only, no grad
    ([130, 12], False, torch.float16, True),
    ([130, 12], True, torch.bfloat16, True),
]
TOL = {torch.float32: (2e-5, 1e-6), torch.float16: (2e-2, 1e-3), torch.bfloat16: (3e-2, 1e-3)}


@pytest.mark.parametrize("n_words,shared,dtype,grad", CASES, ids=str)
def test_structural_loss_on_the_cuda_kernels_is_sync_free_and_matches_cpu(
    n_words, shared, dtype, grad, counters
):
    al = _alignment(_long_texts(n_words), shared)
    # an example with >= 70 units (several 64-unit tiles)
    assert max(int(lay.cu_units.diff().max()) for lay in al.units.values()) >= 70
    ref, ref_grads = _loss(al, dtype, grad=grad)  # CPU kernels
    _ops._reset_sync_counters()
    with _simt.enabled(shuffle_seed=sum(n_words)):
        _simt.reset_stats()
        loss, grads = _loss(al, dtype, grad=grad)
        launches = _simt.stats()["launches"]
    assert counters() == (0, 0)  # no value check, no host-metadata fallback
    assert launches > 0
    rtol, atol = TOL[dtype]
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss.double(), ref.double(), rtol=rtol, atol=atol)
    assert len(grads) == len(ref_grads)
    for a, b in zip(grads, ref_grads, strict=True):
        scale = b.double().abs().max().clamp_min(1e-30)
        torch.testing.assert_close(a.double() / scale, b.double() / scale, rtol=rtol, atol=atol)
