"""Cross-tokenizer logit KD (ULD at shared boundaries, exact shared-vocab KL) vs the plain-loop
reference, plus the hook inside distillation_loss on tiny real-tokenizer models."""

from __future__ import annotations

import math
import random

import pytest
import torch
from _integ_models import TEXTS, require, require_mta_api, tiny_models

from mta_ext.logit_kd import (
    _SortedTopProbs,
    boundary_pairs,
    shared_vocab,
    shared_vocab_kl,
    sorted_top_probs,
    uld_distance,
    uld_distance_to_probs,
    uld_kd,
)
from mta_ext.reference.logit_kd import (
    boundary_pairs_reference,
    shared_vocab_kl_reference,
    uld_reference,
)


def _tokenize(rng: random.Random, n_chars: int) -> list[tuple[int, int]]:
    """Random offsets over n_chars: leading special (0,0), cuts, and byte-piece groups whose
    spans overlap (one character split into 2-3 tokens with identical offsets)."""
    offs: list[tuple[int, int]] = []
    if rng.random() < 0.5:
        offs.append((0, 0))
    pos = 0
    while pos < n_chars:
        step = rng.randint(1, 4)
        end = min(n_chars, pos + step)
        if rng.random() < 0.15:  # a multi-byte char split into byte pieces
            offs.extend([(pos, pos + 1)] * rng.randint(2, 3))
            end = pos + 1
        else:
            offs.append((pos, end))
        pos = end
        if rng.random() < 0.05:
            offs.append((pos, pos))  # a special inside the text
    return offs


def _batch(rng: random.Random, B: int, side: str):
    rows = [_tokenize(rng, rng.randint(3, 25)) for _ in range(B)]
    return rows


def _pad(rows, left: bool):
    T = max(len(r) for r in rows)
    offs = torch.zeros(len(rows), T, 2, dtype=torch.int64)
    mask = torch.zeros(len(rows), T, dtype=torch.int64)
    for b, r in enumerate(rows):
        lo = T - len(r) if left else 0
        offs[b, lo : lo + len(r)] = torch.tensor(r, dtype=torch.int64).reshape(-1, 2)
        mask[b, lo : lo + len(r)] = 1
    return offs, mask


def _random_case(seed: int, B: int = 3):
    rng = random.Random(seed)
    lengths = [rng.randint(3, 25) for _ in range(B)]
    t_rows = [_tokenize(rng, n) for n in lengths]
    s_rows = [_tokenize(rng, n) for n in lengths]
    to, tm = _pad(t_rows, left=rng.random() < 0.5)
    so, sm = _pad(s_rows, left=rng.random() < 0.5)
    return to, tm, so, sm


@pytest.mark.parametrize("seed", range(12))
def test_boundary_pairs_match_reference(seed):
    to, tm, so, sm = _random_case(seed)
    t_rows, s_rows = boundary_pairs(to, tm, so, sm)
    ref = boundary_pairs_reference(to, tm, so, sm)
    assert list(zip(t_rows.tolist(), s_rows.tolist(), strict=True)) == ref
    assert len(ref) > 0


def test_boundary_pairs_rules():
    # teacher: BOS, "ab", byte pieces of "ü" (2 tokens, same span), "c"; student: "a", "bü", "c"
    to = torch.tensor([[[0, 0], [0, 2], [2, 3], [2, 3], [3, 4]]])
    so = torch.tensor([[[0, 1], [1, 3], [3, 4], [0, 0]]])  # last one is padding
    tm = torch.ones(1, 5, dtype=torch.int64)
    sm = torch.tensor([[1, 1, 1, 0]])
    t_rows, s_rows = boundary_pairs(to, tm, so, sm)
    # shared ends: 3 (teacher's second byte piece, student's "bü") and 4; not 1 or 2
    assert t_rows.tolist() == [3, 4] and s_rows.tolist() == [1, 2]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("top_k", [1, 5, 64])
def test_uld_matches_reference(seed, top_k):
    to, tm, so, sm = _random_case(seed)
    g = torch.Generator().manual_seed(seed)
    V_t, V_s = 41, 29  # top_k=64 exceeds both: zero padding
    zt = torch.randn(*tm.shape, V_t, generator=g, dtype=torch.float64) * 3
    zs = torch.randn(*sm.shape, V_s, generator=g, dtype=torch.float64, requires_grad=True)
    t_rows, s_rows = boundary_pairs(to, tm, so, sm)
    got = uld_distance(zs, zt, s_rows, t_rows, top_k=top_k, temperature=1.7, chunk_size=2)
    (g_got,) = torch.autograd.grad(got, zs)
    ref = uld_reference(zs, zt, to, tm, so, sm, top_k=top_k, temperature=1.7)
    (g_ref,) = torch.autograd.grad(ref, zs)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_got, g_ref, rtol=1e-4, atol=1e-6)
    # the chunk size changes nothing
    again = uld_distance(zs, zt, s_rows, t_rows, top_k=top_k, temperature=1.7, chunk_size=1000)
    torch.testing.assert_close(again, got, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("top_k", [1, 7, 64])
def test_cached_teacher_equals_live_teacher(dtype, top_k):
    """Offline distillation: caching every teacher position's sorted top-k probabilities once
    (any chunking), then indexing the matched rows, gives the live-teacher loss and gradient
    bit for bit."""
    to, tm, so, sm = _random_case(11)
    g = torch.Generator().manual_seed(5)
    zt = (torch.randn(*tm.shape, 41, generator=g, dtype=torch.float64) * 3).to(dtype)
    zs = torch.randn(*sm.shape, 29, generator=g, dtype=torch.float64).to(dtype)
    t_rows, s_rows = boundary_pairs(to, tm, so, sm)
    assert t_rows.numel() > 0
    live_in = zs.clone().requires_grad_()
    live = uld_distance(live_in, zt, s_rows, t_rows, top_k=top_k, temperature=1.3)
    (g_live,) = torch.autograd.grad(live, live_in)
    cache = sorted_top_probs(zt, top_k=top_k, temperature=1.3, chunk_size=3)  # every position
    assert cache.shape == (zt.shape[0] * zt.shape[1], top_k)
    assert cache.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert (cache[:, :-1] >= cache[:, 1:]).all()  # sorted, descending
    cached_in = zs.clone().requires_grad_()
    cached = uld_distance_to_probs(cached_in, s_rows, cache[t_rows], temperature=1.3)
    (g_cached,) = torch.autograd.grad(cached, cached_in)
    assert torch.equal(cached, live)
    assert torch.equal(g_cached, g_live)
    # the rows argument selects the same values
    assert torch.equal(sorted_top_probs(zt, t_rows, top_k=top_k, temperature=1.3), cache[t_rows])


def test_cached_teacher_argument_errors():
    zs = torch.randn(1, 4, 9, requires_grad=True)
    rows = torch.tensor([0, 2])
    with pytest.raises(ValueError, match="teacher_probs has 3 rows but student_rows has 2"):
        uld_distance_to_probs(zs, rows, torch.rand(3, 5))
    with pytest.raises(ValueError, match=r"teacher_probs must be \[N, k\]"):
        uld_distance_to_probs(zs, rows, torch.rand(2))
    with pytest.raises(ValueError, match="at least one rank"):
        uld_distance_to_probs(zs, rows, torch.rand(2, 0))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        uld_distance_to_probs(zs, rows, torch.rand(2, 5), temperature=0.0)
    with pytest.raises(ValueError, match="rows must be a 1-D int64 tensor"):
        sorted_top_probs(zs, rows.int())
    with pytest.raises(ValueError, match="top_k must be >= 1"):
        sorted_top_probs(zs, top_k=0)
    empty = torch.zeros(0, dtype=torch.int64)
    loss = uld_distance_to_probs(zs, empty, torch.rand(0, 5))
    loss.backward()
    assert float(loss.detach()) == 0.0 and zs.grad is not None


def test_sorted_top_probs_gradcheck():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 9, generator=g, dtype=torch.float64, requires_grad=True)
    rows = torch.tensor([0, 2, 3, 5])
    torch.autograd.gradcheck(lambda x: _SortedTopProbs.apply(x, rows, 4, 0.7, 3), (z,))


def test_uld_bf16_logits_close_to_fp32():
    to, tm, so, sm = _random_case(7)
    g = torch.Generator().manual_seed(1)
    zt = torch.randn(*tm.shape, 300, generator=g)
    zs = torch.randn(*sm.shape, 200, generator=g)
    t_rows, s_rows = boundary_pairs(to, tm, so, sm)
    zs16 = zs.bfloat16().requires_grad_()
    got = uld_distance(zs16, zt.bfloat16(), s_rows, t_rows, top_k=16)
    ref = uld_distance(zs.bfloat16().float(), zt.bfloat16().float(), s_rows, t_rows, top_k=16)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    got.backward()
    assert zs16.grad is not None and zs16.grad.dtype == torch.bfloat16
    assert torch.isfinite(zs16.grad.float()).all() and zs16.grad.abs().sum() > 0


def test_shared_vocab_kl_matches_reference():
    to, tm, so, sm = _random_case(3)
    g = torch.Generator().manual_seed(3)
    zt = torch.randn(*tm.shape, 23, generator=g, dtype=torch.float64)
    zs = torch.randn(*sm.shape, 17, generator=g, dtype=torch.float64, requires_grad=True)
    t_ids, s_ids = [0, 4, 5, 9, 22], [3, 1, 16, 2, 8]
    t_rows, s_rows = boundary_pairs(to, tm, so, sm)
    vocab = (torch.tensor(t_ids), torch.tensor(s_ids))
    got = shared_vocab_kl(zs, zt, s_rows, t_rows, vocab, temperature=1.3, chunk_size=2)
    (g_got,) = torch.autograd.grad(got, zs)
    pairs = list(zip(t_rows.tolist(), s_rows.tolist(), strict=True))
    ref = shared_vocab_kl_reference(zs, zt, pairs, t_ids, s_ids, temperature=1.3)
    (g_ref,) = torch.autograd.grad(ref, zs)
    torch.testing.assert_close(got.double(), ref, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(g_got, g_ref, rtol=1e-5, atol=1e-8)


def test_no_pairs_gives_zero_with_grad():
    zs = torch.randn(1, 3, 5, requires_grad=True)
    empty = torch.zeros(0, dtype=torch.int64)
    loss = uld_distance(zs, torch.randn(1, 2, 7), empty, empty)
    loss.backward()
    assert float(loss.detach()) == 0.0 and zs.grad is not None


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="top_k"):
        uld_kd(top_k=0)
    with pytest.raises(ValueError, match="exact_weight > 0 needs vocab"):
        uld_kd(exact_weight=1.0)
    hook = uld_kd()

    class Out:
        logits = torch.zeros(1, 2, 3)

    with pytest.raises(ValueError, match="teacher 'offsets'"):
        hook(Out(), Out(), {"alignment": {"teacher": {}, "student": {}}})


_MOVED = (
    "boundary_pairs",
    "same_vocab_kl",
    "shared_vocab",
    "sorted_top_probs",
    "uld_distance",
    "uld_distance_to_probs",
    "uld_kd",
)


def test_old_homes_still_import_with_a_deprecation_warning(monkeypatch):
    """The losses moved from mta_ext.integrations(.logit_kd) to mta_ext.logit_kd: the old
    module and the old package names give the same objects and say where they went."""
    import importlib
    import sys

    import mta_ext.integrations as integrations
    import mta_ext.logit_kd as home

    monkeypatch.delitem(sys.modules, "mta_ext.integrations.logit_kd", raising=False)
    with pytest.warns(
        DeprecationWarning, match=r"integrations\.logit_kd moved to mta_ext\.logit_kd"
    ):
        old = importlib.import_module("mta_ext.integrations.logit_kd")
    assert all(getattr(old, name) is getattr(home, name) for name in home.__all__)
    for name in _MOVED:
        with pytest.warns(DeprecationWarning, match=rf"moved to mta_ext\.logit_kd\.{name}\b"):
            assert getattr(integrations, name) is getattr(home, name)
    with pytest.raises(AttributeError):
        integrations.no_such_name  # noqa: B018


# ----------------------------------------------------------------------------- real tokenizers


@pytest.fixture(scope="module")
def parts():
    require_mta_api()
    require("spacy")
    import mta_ext
    from mta_ext.integrations import MTACollator

    teacher, t_tok, student, s_tok = tiny_models()
    collator = MTACollator(mta_ext.Aligner(t_tok, s_tok), max_length=24)
    return teacher, t_tok, student, s_tok, collator


def test_real_tokenizers_pairs_and_distillation(parts):
    import copy

    import mta_ext
    from mta_ext.integrations import distillation_loss

    teacher, _, student0, _, collator = parts
    batch = collator(TEXTS[:3])
    al = batch["alignment"]
    t_rows, s_rows = boundary_pairs(
        al.teacher["offsets"],
        al.teacher["attention_mask"],
        al.student["offsets"],
        al.student["attention_mask"],
    )
    ref = boundary_pairs_reference(
        al.teacher["offsets"],
        al.teacher["attention_mask"],
        al.student["offsets"],
        al.student["attention_mask"],
    )
    assert list(zip(t_rows.tolist(), s_rows.tolist(), strict=True)) == ref
    # most word ends are shared by a 32k SentencePiece and a 151k byte-level BPE
    n_student = int(al.student["attention_mask"].sum())
    assert len(ref) > 0.4 * n_student, (len(ref), n_student)
    student = copy.deepcopy(student0)
    torch.manual_seed(0)
    mta_loss = mta_ext.MTALoss.from_configs(student.config, teacher.config)
    loss, comps, _ = distillation_loss(
        student, teacher, batch, mta_loss, kd_weight=0.5, logit_kd=uld_kd(top_k=32)
    )
    loss.backward()
    for k in ("ce", "kd", "mta", "loss"):
        assert math.isfinite(float(comps[k])), k
    assert 0 < float(comps["kd"]) <= 2.0  # L1 of two (sub-)probability vectors
    torch.testing.assert_close(
        comps["loss"], 0.5 * comps["ce"] + 0.5 * comps["kd"] + comps["mta"], rtol=1e-5, atol=1e-6
    )
    assert student.lm_head.weight.grad is not None


@pytest.fixture(scope="module")
def vocab(parts):
    _, t_tok, _, s_tok, _ = parts
    return shared_vocab(t_tok, s_tok)


def test_shared_vocab_real_tokenizers(parts, vocab):
    _, t_tok, _, s_tok, _ = parts
    t_ids, s_ids = vocab
    assert len(t_ids) == len(s_ids) > 1000
    for ti, si in list(zip(t_ids.tolist(), s_ids.tolist(), strict=True))[:: len(t_ids) // 50]:
        assert t_tok.decode([ti]) == s_tok.decode([si])


def test_hook_with_exact_term(parts, vocab):
    from mta_ext.integrations import distillation_loss

    teacher, _, student, _, collator = parts
    batch = collator(TEXTS[2:5])
    kw = dict(mta_weight=0.0, kd_weight=1.0)
    _, uld, _ = distillation_loss(student, teacher, batch, None, logit_kd=uld_kd(16), **kw)
    _, both, _ = distillation_loss(
        student, teacher, batch, None, logit_kd=uld_kd(16, vocab=vocab, exact_weight=0.5), **kw
    )
    al = batch["alignment"]
    t_rows, s_rows = boundary_pairs(
        al.teacher["offsets"],
        al.teacher["attention_mask"],
        al.student["offsets"],
        al.student["attention_mask"],
    )
    with torch.no_grad():
        s_out = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        t_out = teacher(
            input_ids=batch["teacher_input_ids"], attention_mask=batch["teacher_attention_mask"]
        )
        kl = shared_vocab_kl(s_out.logits, t_out.logits, s_rows, t_rows, vocab)
    assert float(kl) > 0
    torch.testing.assert_close(both["kd"], uld["kd"] + 0.5 * kl, rtol=1e-4, atol=1e-6)
