"""LayerSchedule: construction, uniform spreading, validation, serialisation."""

from __future__ import annotations

import json

import pytest

from mta_ext.schedule import LayerPair, LayerSchedule


def test_paper_gpt2():
    s = LayerSchedule.paper_gpt2()
    assert list(s) == [(24, 6, "word"), (36, 9, "phrase"), (48, 12, "phrase")]
    assert s[0] == LayerPair(24, 6, "word") and s[0].granularity == "word"
    assert len(s) == 3 and s.granularities == ("word", "phrase")


def test_uniform_reproduces_paper_and_ends_at_last_layer():
    assert LayerSchedule.uniform(48, 12) == LayerSchedule.paper_gpt2()
    s = LayerSchedule.uniform(18, 30, pairs=5, word_pairs=2)
    assert [p.teacher_layer for p in s][-1] == 18 and [p.student_layer for p in s][-1] == 30
    assert [p.granularity for p in s] == ["word", "word", "phrase", "phrase", "phrase"]
    t = [p.teacher_layer for p in s]
    assert t == sorted(t) and t[0] >= 1
    assert list(LayerSchedule.uniform(2, 4, pairs=1)) == [(2, 4, "word")]
    assert all(p.granularity == "phrase" for p in LayerSchedule.uniform(4, 4, 2, word_pairs=0))


@pytest.mark.parametrize(
    "kwargs,msg",
    [
        ({"teacher_layers": 2, "student_layers": 12, "pairs": 3}, "teacher_layers=2"),
        ({"teacher_layers": 12, "student_layers": 12, "pairs": 0}, "pairs must be >= 1"),
        ({"teacher_layers": 12, "student_layers": 12, "pairs": 2, "word_pairs": 3}, "word_pairs"),
    ],
)
def test_uniform_errors(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        LayerSchedule.uniform(**kwargs)


def test_explicit_and_bad_pairs():
    s = LayerSchedule([(1, 1, "word"), [2, 3, "phrase"]])
    assert list(s) == [(1, 1, "word"), (2, 3, "phrase")]
    for bad, msg in [
        ([(1, 1, "sentence")], "granularity"),
        ([(1, -1, "word")], "student_layer"),
        ([(1.5, 1, "word")], "teacher_layer"),
        ([(1, 1)], "pair 0"),
        ([], "at least one pair"),
    ]:
        with pytest.raises(ValueError, match=msg):
            LayerSchedule(bad)


def test_validate_names_the_pair():
    s = LayerSchedule([(1, 1, "word"), (4, 2, "phrase")])
    s.validate(5, 3)
    with pytest.raises(
        ValueError, match=r"pair 1 \(4, 2, 'phrase'\): teacher layer 4 out of range"
    ):
        s.validate(4, 3)
    with pytest.raises(ValueError, match="student layer 2 out of range; the student has 2"):
        s.validate(5, 2)


def test_repr_and_serialisation_roundtrip():
    s = LayerSchedule.paper_gpt2()
    assert repr(s) == "LayerSchedule([(24, 6, 'word'), (36, 9, 'phrase'), (48, 12, 'phrase')])"
    assert eval(repr(s), {"LayerSchedule": LayerSchedule}) == s
    assert LayerSchedule.from_dict(s.to_dict()) == s
    assert LayerSchedule.from_json(s.to_json()) == s
    assert json.loads(s.to_json()) == {
        "pairs": [[24, 6, "word"], [36, 9, "phrase"], [48, 12, "phrase"]]
    }
    assert hash(s) == hash(LayerSchedule.paper_gpt2())
    with pytest.raises(ValueError, match="pairs"):
        LayerSchedule.from_dict({"layers": []})
