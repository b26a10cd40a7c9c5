"""MTACollator: batch shapes, labels, alignment on a real cross-tokenizer batch, bad input."""

from __future__ import annotations

import pytest
import torch
from _integ_models import TEXTS, require, require_mta_api, tiny_models

import mta_ext


@pytest.fixture(scope="module")
def setup():
    require_mta_api("Aligner", "annotate_spans")
    require("spacy")
    from mta_ext.integrations import MTACollator

    _, t_tok, _, s_tok = tiny_models()
    aligner = mta_ext.Aligner(t_tok, s_tok)
    return MTACollator(aligner, max_length=24), t_tok, s_tok


def _check_batch(batch, s_tok, texts):
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    B, T = ids.shape
    assert B == len(texts) and mask.shape == labels.shape == (B, T)
    assert ids.dtype == labels.dtype == torch.int64
    # labels: input ids on real tokens, -100 exactly on padding
    assert torch.equal(labels == -100, mask == 0)
    assert torch.equal(labels[mask == 1], ids[mask == 1])
    al = batch["alignment"]
    assert torch.equal(batch["teacher_input_ids"], al.teacher["input_ids"])
    assert torch.equal(batch["teacher_attention_mask"], al.teacher["attention_mask"])
    assert torch.equal(ids, al.student["input_ids"])
    Tt = batch["teacher_input_ids"].shape[1]
    flat_ids = ids.reshape(-1)
    n_units = 0
    for gran, lay in al.units.items():
        cu = lay.cu_units
        assert cu.shape == (B + 1,) and int(cu[0]) == 0 and torch.all(cu[1:] >= cu[:-1])
        N = int(cu[-1])
        n_units += N
        assert lay.teacher_ranges.shape == lay.student_ranges.shape == (N, 2)
        for k in range(N):
            b = int(torch.searchsorted(cu[1:], torch.tensor(k), right=True))
            (ts, te), (ss, se) = lay.teacher_ranges[k].tolist(), lay.student_ranges[k].tolist()
            # non-empty ranges inside the example's own row, on real (non-pad) tokens
            assert b * Tt <= ts < te <= (b + 1) * Tt, (gran, k)
            assert b * T <= ss < se <= (b + 1) * T, (gran, k)
            assert bool(mask.reshape(-1)[ss:se].all())
            a, z = lay.spans[k].tolist()
            # the student's tokens of a unit spell (a part of) the unit's text (ASCII texts)
            piece = s_tok.decode(flat_ids[ss:se].tolist()).strip()
            assert piece and piece in texts[b][a:z], (gran, k, piece, texts[b][a:z])
    assert n_units > 0


def test_collator_batch_and_alignment(setup):
    collator, _, s_tok = setup
    texts = TEXTS[:3]
    batch = collator([{"text": t} for t in texts])
    _check_batch(batch, s_tok, texts)
    assert batch["input_ids"].shape[1] <= 24 and batch["teacher_input_ids"].shape[1] <= 24
    assert set(batch["alignment"].units) >= {"word", "phrase"}


def test_cached_spans_give_the_same_batch(setup):
    collator, _, _ = setup
    texts = TEXTS[:3]
    spans = mta_ext.annotate_spans(texts)
    a = collator([{"text": t} for t in texts])
    b = collator([{"text": t, "spans": s} for t, s in zip(texts, spans, strict=True)])
    for key in ("input_ids", "labels", "teacher_input_ids"):
        assert torch.equal(a[key], b[key])
    for gran, lay in a["alignment"].units.items():
        other = b["alignment"].units[gran]
        for name in ("cu_units", "teacher_ranges", "student_ranges"):
            assert torch.equal(getattr(lay, name), getattr(other, name)), (gran, name)


def test_dataloader_and_left_padding(setup):
    from torch.utils.data import DataLoader

    from mta_ext.data import TextDataset
    from mta_ext.integrations import MTACollator

    collator, _, s_tok = setup
    loader = DataLoader(TextDataset(TEXTS), batch_size=4, collate_fn=collator)
    batches = list(loader)
    assert [b["input_ids"].shape[0] for b in batches] == [4, 2]
    _check_batch(batches[1], s_tok, TEXTS[4:])
    left = MTACollator(collator.aligner, max_length=24, padding_side="left")(TEXTS[:2])
    assert torch.equal(left["labels"] == -100, left["attention_mask"] == 0)
    assert bool(left["attention_mask"][:, -1].all())  # padding sits on the left


def test_bad_input(setup):
    from mta_ext.integrations import MTACollator

    collator, _, _ = setup
    with pytest.raises(ValueError, match="empty batch"):
        collator([])
    with pytest.raises(ValueError, match="example 1"):
        collator([{"text": "ok"}, {"input_ids": [1, 2]}])
    with pytest.raises(ValueError, match="example 1 has no 'spans'"):
        collator([{"text": "a b", "spans": {"word": [], "phrase": []}}, {"text": "c d"}])
    with pytest.raises(ValueError, match="padding_side"):
        MTACollator(collator.aligner, padding_side="middle")
    with pytest.raises(ValueError, match="max_length"):
        MTACollator(collator.aligner, max_length=0)
