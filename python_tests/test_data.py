"""Corpus loading, chunking and the held-out split (no models)."""

from __future__ import annotations

import json

import pytest

from mta_ext.data import (
    TextDataset,
    chunk_texts,
    load_texts,
    shuffled_batches,
    train_eval_split,
)


def test_load_jsonl_json_and_text(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text('{"text": "one"}\n\n{"prompt": "q", "response": " two "}\n"three"\n')
    assert load_texts(p) == ["one", "two", "three"]
    j = tmp_path / "a.json"
    j.write_text(json.dumps([{"text": "x"}, "y"]))
    assert load_texts(j) == ["x", "y"]
    t = tmp_path / "a.txt"
    t.write_text("para one\nstill one\n\n\npara two\n")
    assert load_texts(t) == ["para one\nstill one", "para two"]
    bad = tmp_path / "b.jsonl"
    bad.write_text('{"text": "ok"}\n{"nope": 1}\n')
    with pytest.raises(ValueError, match="line 2"):
        load_texts(bad)
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_texts(tmp_path / "missing.jsonl")


def test_ifbench_corpus():
    texts = load_texts()
    assert len(texts) == 294 and all(isinstance(t, str) and t for t in texts)


def test_chunking_keeps_text_and_bounds():
    text = "First sentence here. Second one!  Third?\nA new line. " + "x" * 50
    chunks = chunk_texts([text], 25)
    assert chunks[0] == "First sentence here."
    assert all(len(c) <= 25 for c in chunks[:-1]) and chunks[-1] == "x" * 50
    # nothing lost but the whitespace at the cuts
    assert "".join(chunks).replace(" ", "") == "".join(text.split())
    with pytest.raises(ValueError):
        chunk_texts([text], 0)


def test_split_is_deterministic_and_disjoint():
    texts = [f"t{i}" for i in range(50)]
    tr, ev = train_eval_split(texts, 0.1, seed=3)
    assert (tr, ev) == train_eval_split(texts, 0.1, seed=3)
    assert len(ev) == 5 and not set(tr) & set(ev) and sorted(tr + ev) == sorted(texts)
    assert train_eval_split(texts, 0.1, seed=4) != (tr, ev)
    ds = TextDataset(ev, spans=[{"word": []}] * 5)
    assert ds[0] == {"text": ev[0], "spans": {"word": []}} and len(ds) == 5
    with pytest.raises(ValueError):
        TextDataset(ev, spans=[])


def test_shuffled_batches_epochs_and_seed():
    b = shuffled_batches(5, steps=4, batch_size=3, seed=7)
    assert [len(x) for x in b] == [3, 3, 3, 3]
    flat = [i for x in b for i in x]
    assert sorted(flat[:5]) == list(range(5)) and sorted(flat[5:10]) == list(range(5))
    assert b == shuffled_batches(5, steps=4, batch_size=3, seed=7)
    assert b != shuffled_batches(5, steps=4, batch_size=3, seed=8)
    with pytest.raises(ValueError, match="n_items must be >= 1"):
        shuffled_batches(0, steps=1, batch_size=1, seed=0)
