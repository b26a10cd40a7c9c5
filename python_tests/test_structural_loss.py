"""structural_loss / MTALoss vs the reference, end to end on tiny random-init HF models."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from tiny_fixtures import tiny_gpt2
from torch import nn

import mta_ext
from mta_ext import reference as ref
from mta_ext.losses import MTALoss, structural_loss, unit_weights
from mta_ext.schedule import LayerSchedule

transformers = pytest.importorskip("transformers")

B, TT, TS = 3, 14, 11


def _layout(counts, mt, ms, g, max_len=3):
    """Random units inside each example's valid tokens (overlaps allowed), flattened ranges."""
    cu, tr, sr = [0], [], []
    for b, n in enumerate(counts):
        for m, out in ((mt, tr), (ms, sr)):
            T = m.shape[1]
            valid = m[b].nonzero().flatten()
            lo, hi = int(valid.min()), int(valid.max()) + 1
            for _ in range(n):
                s = int(torch.randint(lo, hi, (1,), generator=g))
                e = min(hi, s + int(torch.randint(1, max_len + 1, (1,), generator=g)))
                out.append([b * T + s, b * T + e])
        cu.append(cu[-1] + n)
    as_t = lambda x: torch.tensor(x, dtype=torch.long).reshape(-1, 2)  # noqa: E731
    return SimpleNamespace(
        cu_units=torch.tensor(cu, dtype=torch.long),
        teacher_ranges=as_t(tr),
        student_ranges=as_t(sr),
        spans=as_t([[0, 1]] * len(tr)),
    )


def _batch(seed=0, word=(3, 0, 5), phrase=(2, 4, 1), pad=True, same_tokenizer=False, Tt=TT, Ts=TS):
    g = torch.Generator().manual_seed(seed)
    if same_tokenizer:
        Ts = Tt
    mt = torch.ones(B, Tt, dtype=torch.long)
    ms = torch.ones(B, Ts, dtype=torch.long)
    if pad:
        mt[1, Tt - 4 :] = 0  # right padding on the teacher
        mt[2, Tt - 2 :] = 0
        if same_tokenizer:
            ms = mt.clone()
        else:
            ms[0, :3] = 0  # left padding on the student
            ms[2, :1] = 0
    units = {"word": _layout(word, mt, ms, g), "phrase": _layout(phrase, mt, ms, g)}
    if same_tokenizer:
        for lay in units.values():
            lay.student_ranges = lay.teacher_ranges.clone()
    ids_t = torch.randint(0, 97, (B, Tt), generator=g)
    ids_s = ids_t.clone() if same_tokenizer else torch.randint(0, 131, (B, Ts), generator=g)
    return SimpleNamespace(
        texts=["x"] * B,
        units=units,
        teacher={"input_ids": ids_t, "attention_mask": mt},
        student={"input_ids": ids_s, "attention_mask": ms},
    )


def _run(model, enc, grad=False):
    with torch.set_grad_enabled(grad):
        return model(**enc, output_hidden_states=True)


SCHED = LayerSchedule([(1, 1, "word"), (2, 2, "phrase"), (3, 2, "phrase")])


def _projectors(ds=32, dt=48, n=3, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return nn.ModuleList(nn.Linear(ds, dt) for _ in range(n)).to(dtype)


def _leaf(hs, dtype):
    return tuple(h.detach().to(dtype).requires_grad_() for h in hs)


@pytest.mark.parametrize("weighting", ["salience", "uniform", "entropy"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_reference_end_to_end(models, weighting, dtype):
    teacher, student = models
    al = _batch(seed=1)
    t_out, s_out = _run(teacher, al.teacher), _run(student, al.student)
    t_hs = tuple(h.to(dtype) for h in t_out.hidden_states)
    projs = _projectors(dtype=dtype)
    kw = dict(projectors=projs, weighting=weighting, teacher_logits=t_out.logits.to(dtype))
    s1 = _leaf(s_out.hidden_states, dtype)
    s2 = _leaf(s_out.hidden_states, dtype)
    got, comps = structural_loss(s1, t_hs, al, SCHED, return_components=True, **kw)
    exp, rcomps = ref.structural_loss(s2, t_hs, al, SCHED, return_components=True, **kw)
    # Salience weights are float32 even for float64 hidden states (one rounding of w); entropy
    # weighting pools with salience too.
    exact = dtype == torch.float64 and weighting == "uniform"
    tol = dict(rtol=1e-10, atol=1e-12) if exact else dict(rtol=2e-5, atol=1e-6)
    if dtype == torch.float64 and not exact:
        tol = dict(rtol=1e-7, atol=1e-10)
    assert got.dtype == dtype and got.item() > 0
    torch.testing.assert_close(got, exp.to(dtype), **tol)
    pair_keys = {f"{k}/{i}" for k in ("dsa", "hid") for i in range(3)}
    assert comps.keys() == rcomps.keys() == pair_keys | {"hid_level"}
    assert comps["hid_level"] == rcomps["hid_level"] == "unit"  # no shared tokenizer recorded
    for k in pair_keys:
        torch.testing.assert_close(comps[k], rcomps[k].to(dtype), **tol)
    params = list(projs.parameters())
    g1 = torch.autograd.grad(got, [*s1[1:], *params], allow_unused=True, materialize_grads=True)
    g2 = torch.autograd.grad(exp, [*s2[1:], *params], allow_unused=True, materialize_grads=True)
    gtol = dict(rtol=1e-3, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-6, atol=1e-9)
    if exact:
        gtol = dict(rtol=1e-9, atol=1e-12)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b.to(a.dtype), **gtol)
    assert any(a.abs().sum() > 0 for a in g1)


def test_token_level_hid_shared_tokenizer(models, shared_student):
    teacher, _ = models
    al = _batch(seed=2, same_tokenizer=True)
    t_hs = _run(teacher, al.teacher).hidden_states
    s_hs = _leaf(_run(shared_student, al.student).hidden_states, torch.float64)
    t_hs = tuple(h.double() for h in t_hs)
    projs = _projectors(dtype=torch.float64)
    got = structural_loss(s_hs, t_hs, al, SCHED, projectors=projs, hid="token")
    exp = ref.structural_loss(s_hs, t_hs, al, SCHED, projectors=projs, hid="token")
    # float32 salience weights: one rounding of w separates op and reference
    torch.testing.assert_close(got, exp, rtol=1e-7, atol=1e-10)
    unit = structural_loss(s_hs, t_hs, al, SCHED, projectors=projs, hid="unit")
    assert not torch.allclose(got, unit)  # the two levels are different losses
    ga = torch.autograd.grad(got, s_hs[1:])
    gb = torch.autograd.grad(exp, s_hs[1:])
    for a, b in zip(ga, gb, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("weighting", ["salience", "entropy"])
def test_token_hid_projects_only_covered_rows_with_host_metadata(models, shared_student, weighting):
    """Layouts with host metadata (``.host``, as an Aligner's): the token-level Hid projects
    only the rows inside some unit; same loss and gradients as projecting every row (a layout
    without ``.host``) and as the reference, on a padded batch with overlapping units."""
    from mta_ext._layout import layout_host_info

    teacher, _ = models
    al = _batch(seed=12, same_tokenizer=True)
    t_out = _run(teacher, al.teacher)
    t_hs = tuple(h.double() for h in t_out.hidden_states)
    s_hs = _leaf(_run(shared_student, al.student).hidden_states, torch.float64)
    hosted = SimpleNamespace(**vars(al))
    hosted.units = {}
    for g, lay in al.units.items():
        info = layout_host_info(lay.cu_units, lay.teacher_ranges, lay.student_ranges)
        assert 0 < info.teacher_covered_rows < t_hs[0].shape[0] * t_hs[0].shape[1]
        hosted.units[g] = SimpleNamespace(**vars(lay), host=info)
    projs = _projectors(dtype=torch.float64)
    kw = dict(
        projectors=projs, hid="token", weighting=weighting, teacher_logits=t_out.logits.double()
    )
    got = structural_loss(s_hs, t_hs, hosted, SCHED, **kw)
    full = structural_loss(s_hs, t_hs, al, SCHED, **kw)
    exp = ref.structural_loss(s_hs, t_hs, al, SCHED, **kw)
    torch.testing.assert_close(got, full, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(got, exp, rtol=1e-7, atol=1e-10)
    params = list(projs.parameters())
    ga = torch.autograd.grad(got, [*s_hs[1:], *params])
    gf = torch.autograd.grad(full, [*s_hs[1:], *params])
    gb = torch.autograd.grad(exp, [*s_hs[1:], *params])
    for a, f, b in zip(ga, gf, gb, strict=True):
        torch.testing.assert_close(a, f, rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


def test_gradcheck_uniform_weighting(models):
    teacher, student = models
    al = _batch(seed=4, word=(2, 1, 3), phrase=(1, 3, 2))
    t_hs = tuple(h.double() for h in _run(teacher, al.teacher).hidden_states)
    s_hs = _leaf(_run(student, al.student).hidden_states, torch.float64)
    projs = _projectors(dtype=torch.float64)
    sched = LayerSchedule([(1, 1, "word"), (3, 2, "phrase")])

    def f(h1, h2):
        return structural_loss(
            (s_hs[0], h1, h2), t_hs, al, sched, projectors=projs[:2], weighting="uniform"
        )

    assert torch.autograd.gradcheck(f, (s_hs[1], s_hs[2]), fast_mode=True)


def test_zero_shared_units_gives_zero_and_zero_grads(models):
    teacher, student = models
    al = _batch(seed=5, word=(0, 0, 0), phrase=(0, 0, 0))
    loss_fn = MTALoss(SCHED, 32, 48)
    student.zero_grad(set_to_none=True)
    loss = loss_fn(_run(student, al.student, grad=True), _run(teacher, al.teacher), al)
    assert loss.item() == 0.0
    loss.backward()
    for p in [*student.parameters(), *loss_fn.parameters()]:
        assert p.grad is None or (p.grad == 0).all()


def test_one_unit_per_example_gives_zero_dsa(models):
    teacher, student = models
    al = _batch(seed=6, word=(1, 1, 1), phrase=(1, 0, 1))
    s_hs = _run(student, al.student).hidden_states
    t_hs = _run(teacher, al.teacher).hidden_states
    loss, comps = structural_loss(s_hs, t_hs, al, SCHED, return_components=True)
    assert loss.item() == 0.0 and all(v.item() == 0.0 for v in comps.values())


def test_loss_decreases_when_training_student(models):
    teacher, _ = models
    torch.manual_seed(7)
    student = tiny_gpt2(131)  # the ``models`` student, freshly initialised
    al = _batch(seed=7, word=(6, 4, 5), phrase=(4, 5, 3))
    loss_fn = MTALoss.from_configs(student.config, teacher.config, schedule=SCHED)
    t_out = _run(teacher, al.teacher)
    opt = torch.optim.Adam([*student.parameters(), *loss_fn.parameters()], lr=3e-3)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss = loss_fn(_run(student, al.student, grad=True), t_out, al)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def _check_compile_matches_eager(models, tol, grad_tol, **compile_kwargs):
    """torch.compile(fullgraph=True) of structural_loss: value and student grads == eager."""
    teacher, student = models
    al = _batch(seed=8)
    t_hs = _run(teacher, al.teacher).hidden_states
    s_eager = _leaf(_run(student, al.student).hidden_states, torch.float32)
    s_comp = _leaf(s_eager, torch.float32)
    projs = _projectors()

    def f(s_hs, t_hs):
        return structural_loss(s_hs, t_hs, al, SCHED, projectors=projs)

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, **compile_kwargs)
    exp = f(s_eager, t_hs)
    got = compiled(s_comp, t_hs)
    torch.testing.assert_close(got, exp, rtol=tol[0], atol=tol[1])
    for a, b in zip(
        torch.autograd.grad(got, s_comp[1:]), torch.autograd.grad(exp, s_eager[1:]), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=grad_tol[0], atol=grad_tol[1])


def test_torch_compile_fullgraph_matches_eager(models):
    _check_compile_matches_eager(models, (1e-6, 1e-7), (1e-5, 1e-7), backend="aot_eager")


def test_mtaloss_module(models):
    teacher, student = models
    al = _batch(seed=9)
    loss_fn = MTALoss(SCHED, student_hidden_size=32, teacher_hidden_size=48)
    assert len(loss_fn.projectors) == 3
    assert {k for k in loss_fn.state_dict()} == {
        f"projectors.{i}.{p}" for i in range(3) for p in ("weight", "bias")
    }
    assert "LayerSchedule" in repr(loss_fn)
    s_out, t_out = _run(student, al.student), _run(teacher, al.teacher)
    a = loss_fn(s_out, t_out, al)
    b = loss_fn(s_out.hidden_states, t_out.hidden_states, al)
    c = structural_loss(
        s_out.hidden_states, t_out.hidden_states, al, SCHED, projectors=loss_fn.projectors
    )
    assert torch.equal(a, b) and torch.equal(a, c)
    # a plain dict of layouts plus explicit masks is accepted too
    d = loss_fn(
        s_out,
        t_out,
        al.units,
        teacher_attention_mask=al.teacher["attention_mask"],
        student_attention_mask=al.student["attention_mask"],
    )
    assert torch.equal(a, d)
    ent = MTALoss(SCHED, 32, 48, weighting="entropy")
    ent.load_state_dict(loss_fn.state_dict())
    assert torch.isfinite(ent(s_out, t_out, al))
    assert MTALoss(SCHED)(s_out, t_out, al).item() >= 0  # DSA only
    assert mta_ext.MTALoss is MTALoss and mta_ext.structural_loss is structural_loss


def test_unit_weights_matches_reference():
    g = torch.Generator().manual_seed(10)
    w = torch.rand(40, generator=g)
    w[5:12] = 0
    ranges = torch.tensor([[0, 3], [2, 6], [6, 12], [20, 20], [30, 40], [8, 10]])
    for cu in (torch.tensor([0, 2, 4, 6]), torch.tensor([0, 0, 6, 6]), torch.tensor([0, 3, 3, 6])):
        torch.testing.assert_close(unit_weights(w, ranges, cu), ref.unit_weights(w, ranges, cu))
    # example 1 of the last layout owns units 2 and 5, both with zero weight -> W = 0
    out = unit_weights(w, torch.tensor([[0, 3], [6, 8], [8, 10]]), torch.tensor([0, 1, 3]))
    assert out[1:].eq(0).all() and out[0] == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_unit_weights_do_not_cancel_behind_mass_outside_units(dtype):
    """Salience mass outside the units (a special token of weight 1) must not cancel a small
    unit's weight: W is each unit's own sum, not a difference of running sums over the batch."""
    w = torch.tensor([4.4e-28, 1.0, 1e-17, 1.0, 1e-17, 2e-17], dtype=dtype)
    # example 0: unit [2,3) (1e-17) lies behind the weight-1 token, unit [0,1) (4.4e-28) before
    # it; example 1: two tiny units behind another weight-1 token.
    ranges = torch.tensor([[2, 3], [0, 1], [4, 5], [5, 6]])
    cu = torch.tensor([0, 2, 4])
    got = unit_weights(w, ranges, cu)
    exp = ref.unit_weights(w, ranges, cu)
    torch.testing.assert_close(
        exp[:2].double(), torch.tensor([1.0, 4.4e-11]).double(), rtol=1e-6, atol=0
    )
    torch.testing.assert_close(got, exp, rtol=1e-6, atol=0)


def test_errors(models):
    teacher, student = models
    al = _batch(seed=11)
    s_hs = _run(student, al.student).hidden_states
    t_hs = _run(teacher, al.teacher).hidden_states
    projs = _projectors()
    with pytest.raises(
        ValueError, match=r"pair 2 \(3, 3, 'phrase'\): student layer 3 out of range"
    ):
        structural_loss(s_hs, t_hs, al, [(1, 1, "word"), (2, 2, "phrase"), (3, 3, "phrase")])
    with pytest.raises(ValueError, match="mismatched batch sizes"):
        structural_loss(tuple(h[:2] for h in s_hs), t_hs, al, SCHED)
    bad = _batch(seed=11)
    bad.units["word"].cu_units = bad.units["word"].cu_units[:-1]
    with pytest.raises(ValueError, match=r"alignment\['word'\].cu_units has 3 entries"):
        structural_loss(s_hs, t_hs, bad, SCHED)
    meta = _batch(seed=11)
    meta.units["phrase"].teacher_ranges = meta.units["phrase"].teacher_ranges.to("meta")
    with pytest.raises(ValueError, match=r"alignment\['phrase'\].teacher_ranges is on meta"):
        structural_loss(s_hs, t_hs, meta, SCHED)
    with pytest.raises(ValueError, match=r"projectors\[1\].*nn.Linear\(32, 48\).*Linear\(32, 40\)"):
        structural_loss(
            s_hs,
            t_hs,
            al,
            SCHED,
            projectors=[nn.Linear(32, 48), nn.Linear(32, 40), nn.Linear(32, 48)],
        )
    with pytest.raises(ValueError, match="one per layer pair"):
        structural_loss(s_hs, t_hs, al, SCHED, projectors=projs[:2])
    with pytest.raises(ValueError, match="no 'phrase' units"):
        structural_loss(s_hs, t_hs, {"word": al.units["word"]}, SCHED)
    with pytest.raises(ValueError, match="hid='token' needs one shared tokenizer"):
        structural_loss(s_hs, t_hs, al, SCHED, projectors=projs, hid="token")
    with pytest.raises(ValueError, match="needs teacher_logits"):
        structural_loss(s_hs, t_hs, al, SCHED, weighting="entropy")
    with pytest.raises(ValueError, match="weighting must be one of"):
        structural_loss(s_hs, t_hs, al, SCHED, weighting="idf")
    with pytest.raises(ValueError, match="student attention_mask has shape"):
        structural_loss(s_hs, t_hs, al, SCHED, student_attention_mask=al.teacher["attention_mask"])
    with pytest.raises(ValueError, match="output_hidden_states=True"):
        MTALoss(SCHED)(SimpleNamespace(hidden_states=None), t_hs, al)


@pytest.mark.slow
@pytest.mark.skipif(
    not __import__("os").environ.get("MTA_RUN_SLOW"),
    reason="inductor compile takes ~100 s on 2 cores; set MTA_RUN_SLOW=1",
)
def test_torch_compile_inductor_fullgraph(models):
    _check_compile_matches_eager(models, (1e-5, 1e-6), (1e-4, 1e-6))


def test_with_real_alignment(models):
    """End to end with the real aligner (tiny trained tokenizers), when it is available."""
    alignment = pytest.importorskip("mta_ext.alignment")
    tk = pytest.importorskip("tokenizers")
    import re

    corpus = [
        "the cat sat on the mat",
        "a dog ran in the park",
        "birds sing at dawn today",
        "the quick brown fox jumps over the lazy dog",
    ] * 5

    def train(model, trainer):
        tok = tk.Tokenizer(model)
        tok.pre_tokenizer = tk.pre_tokenizers.Whitespace()
        tok.train_from_iterator(corpus, trainer)
        return tok

    t_tok = train(
        tk.models.BPE(unk_token="[UNK]"),
        tk.trainers.BpeTrainer(vocab_size=90, special_tokens=["[UNK]", "[PAD]"]),
    )
    s_tok = train(
        tk.models.WordPiece(unk_token="[UNK]"),
        tk.trainers.WordPieceTrainer(vocab_size=120, special_tokens=["[UNK]", "[PAD]"]),
    )
    assert t_tok.get_vocab_size() <= 97 and s_tok.get_vocab_size() <= 131

    def two_words(text):
        return [(m.start(), m.end()) for m in re.finditer(r"\w+ \w+", text)]

    aligner = alignment.Aligner(t_tok, s_tok, phrases=two_words, words="all")
    al = aligner(["the cat sat on the mat today", "a quick dog", "birds"])
    assert al.units["word"].cu_units[-1] > 0 and al.units["phrase"].cu_units[-1] > 0
    teacher, student = models
    enc_t = {k: al.teacher[k] for k in ("input_ids", "attention_mask")}
    enc_s = {k: al.student[k] for k in ("input_ids", "attention_mask")}
    t_hs = tuple(h.double() for h in _run(teacher, enc_t).hidden_states)
    s_hs = _leaf(_run(student, enc_s).hidden_states, torch.float64)
    projs = _projectors(dtype=torch.float64)
    got = structural_loss(s_hs, t_hs, al, SCHED, projectors=projs)
    exp = ref.structural_loss(s_hs, t_hs, al, SCHED, projectors=projs)
    torch.testing.assert_close(got, exp, rtol=1e-7, atol=1e-10)
    assert got.item() > 0
