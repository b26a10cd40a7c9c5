"""Spans cached with the real ``datasets`` (batched map, 2 processes) give the collator exactly
the batches it builds when it runs spaCy itself."""

from __future__ import annotations

import pytest
import torch
from _integ_models import TEXTS, require, require_mta_api, tiny_models

import mta_ext

MORE = [
    "Birds fly south in winter because the northern lakes freeze over.",
    "She quickly wrote a long letter to her grandmother in Lisbon.",
    "Can you explain how a compiler turns source code into machine instructions?",
    "The museum's new exhibition opens next Friday with free admission.",
]


@pytest.fixture(scope="module")
def tokenizers():
    require_mta_api()
    require("datasets", "spacy")
    _, t_tok, _, s_tok = tiny_models()
    return t_tok, s_tok


def _assert_same_batch(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for k, v in a.items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, b[k]), k
    al, bl = a["alignment"], b["alignment"]
    assert al.texts == bl.texts
    for side in ("teacher", "student"):
        for k, v in getattr(al, side).items():
            assert torch.equal(v, getattr(bl, side)[k]), (side, k)
    assert set(al.units) == set(bl.units)
    for g, lay in al.units.items():
        for f in ("cu_units", "spans", "teacher_ranges", "student_ranges"):
            assert torch.equal(getattr(lay, f), getattr(bl.units[g], f)), (g, f)


@pytest.mark.parametrize("phrases", ["spacy", None])
def test_cached_spans_give_identical_batches(tokenizers, phrases):
    from datasets import Dataset
    from torch.utils.data import DataLoader

    from mta_ext.data import SpanAnnotator
    from mta_ext.integrations import MTACollator

    t_tok, s_tok = tokenizers
    words = "in_phrases" if phrases else "all"
    texts = TEXTS + MORE
    ds = Dataset.from_dict({"text": texts, "id": list(range(len(texts)))})
    ann = SpanAnnotator(phrases=phrases, words=words)
    cached = ds.map(ann, batched=True, batch_size=3, num_proc=2, features=ann.features(ds.features))
    assert cached.column_names == ["text", "id", "spans"]
    direct = mta_ext.annotate_spans(texts, phrases=phrases, words=words)
    assert [dict(s) for s in cached["spans"]] == direct  # order kept across the 2 processes
    assert sum(len(s["word"]) for s in direct) > 0

    aligner = mta_ext.Aligner(t_tok, s_tok, phrases=phrases, words=words)
    collator = MTACollator(aligner, max_length=24)
    on_the_fly = DataLoader(ds.remove_columns("id"), batch_size=4, collate_fn=collator)
    from_cache = DataLoader(cached.remove_columns("id"), batch_size=4, collate_fn=collator)
    n = 0
    for a, b in zip(on_the_fly, from_cache, strict=True):
        _assert_same_batch(a, b)
        n += 1
    assert n == 3

    # the cached path really skips the span source: a collator whose aligner cannot parse
    # still collates the cached rows
    def boom(text):
        raise AssertionError("spans were recomputed")

    strict = MTACollator(mta_ext.Aligner(t_tok, s_tok, phrases=boom), max_length=24)
    _assert_same_batch(
        collator(list(cached.select(range(4)))), strict(list(cached.select(range(4))))
    )


def test_annotator_errors(tokenizers):
    from mta_ext.data import SpanAnnotator

    with pytest.raises(ValueError, match="words must be"):
        SpanAnnotator(words="some")
    with pytest.raises(ValueError, match="no 'text' column"):
        SpanAnnotator()({"body": ["x"]})
