"""Regressions of the aligner on hostile input: truncation between the byte-level pieces of one
character, max_length below a tokenizer's special tokens (or negative), a single str as texts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from alignment_checks import check_alignment
from tokenizers_util import mistral, qwen, tiny_bpe, tiny_unigram, tiny_wordpiece

from mta_ext import _align
from mta_ext.alignment import Aligner
from mta_ext.reference.alignment import align_reference

# ----------------------------------------------------------------------------- truncation


def _kept(al, g="word"):
    lay = al.units[g]
    return lay.spans.tolist(), al.candidates[g]["status"].tolist()


def test_truncation_between_pieces_of_one_char_drops_the_unit():
    """Qwen2 on both sides, 'go 쫕' -> 'go', 'Ġì', '«', 'ķ' (the last three: one char).
    max_length=2 keeps 'go', 'Ġì': the offsets of 'Ġì' cover the whole char, yet '«', 'ķ' of
    the same char were cut, so the unit [3, 4) must go (it was kept with range [1, 2))."""
    q = qwen()
    al = Aligner(q, q, phrases=None)("go 쫕", max_length=2, spans={"word": [[0, 2], [3, 4]]})
    check_alignment(al)
    assert al.teacher["input_ids"].shape == (1, 2)
    assert al.teacher["offsets"][0].tolist() == [[0, 2], [2, 4]]
    spans, status = _kept(al)
    assert spans == [[0, 2]] and status == [0, 1]  # 1 = truncated (teacher)
    assert al.units["word"].teacher_ranges.tolist() == [[0, 1]]
    assert al.candidates["word"]["teacher_window"].tolist() == [[0, 3]]
    assert "dropped [3:4] '쫕': truncated (teacher)" in al.explain(0)
    # Untruncated (and cut after the whole char) the unit is kept.
    for ml in (None, 4):
        full = Aligner(q, q, phrases=None)(["go 쫕"], max_length=ml, spans=[{"word": [[3, 4]]}])
        assert full.units["word"].teacher_ranges.tolist() == [[1, 4]]


def test_truncation_cut_on_the_student_side_only():
    # Qwen2: 'go', 'Ġì', '«', 'ķ'; Mistral: '▁go', '▁', <0xEC>, <0xAB>, <0x95>.
    aligner = Aligner(qwen(), mistral(), phrases=None)
    spans = [{"word": [[0, 2], [3, 4]]}]
    al = aligner(["go 쫕"], max_length=4, spans=spans)  # the teacher fits, the student is cut
    check_alignment(al)
    assert al.teacher["attention_mask"].sum() == 4 and al.student["attention_mask"].sum() == 4
    assert _kept(al) == ([[0, 2]], [0, 2])  # 2 = truncated (student)
    al = aligner(["go 쫕"], max_length=3, spans=spans)  # both cut: the teacher's reason first
    check_alignment(al)
    assert _kept(al) == ([[0, 2]], [0, 1])


def test_left_truncation_between_pieces_of_one_char_drops_the_unit():
    tok = tiny_bpe()  # byte-level: '쫕 go' -> 'ì', '«', 'ķ', 'Ġ', 'g', 'o'
    old = tok.truncation_side
    tok.truncation_side = "left"
    try:
        al = Aligner(tok, tok, phrases=None)(
            ["쫕 go"], max_length=4, spans=[{"word": [[0, 1], [2, 4]]}]
        )
    finally:
        tok.truncation_side = old
    check_alignment(al)
    assert al.teacher["offsets"][0].tolist() == [[0, 1], [1, 2], [2, 3], [3, 4]]
    assert al.candidates["word"]["teacher_window"].tolist() == [[1, 4]]
    assert _kept(al) == ([[2, 4]], [1, 0])


def test_bare_tokenizer_own_truncation_is_seen():
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tiny_bpe().backend_tokenizer.to_str())
    tok.enable_truncation(4)  # its own truncation, no max_length given to the aligner
    al = Aligner(tok, tok, phrases=None)(["go 쫕"], spans=[{"word": [[0, 2], [3, 4]]}])
    check_alignment(al)
    assert al.teacher["attention_mask"].sum() == 4  # 'g', 'o', 'Ġ', 'ì' (of 'ì', '«', 'ķ')
    assert _kept(al) == ([[0, 2]], [0, 1])


def test_engine_window_argument_and_errors():
    text = "ab cd"
    off = np.array([[[0, 2], [2, 5]]], np.int64)
    mask = np.ones((1, 2), np.int64)
    units = [("word", np.array([0, 2]), np.array([[0, 2], [3, 5]], np.int64))]
    args = ([text], off, mask, off, mask, units)
    for fn in (_align.align, align_reference):
        r = fn(*args, 0, None, np.array([[0, 4]]))[0]
        assert r["status"].tolist() == [0, 2]
        r = fn(*args, 0, np.array([[1, 5]]), None)[0]
        assert r["status"].tolist() == [1, 0]
        r = fn(*args, 0, np.array([[0, 5]]), np.array([[0, 5]]))[0]
        assert r["status"].tolist() == [0, 0]
        with pytest.raises(ValueError, match=r"teacher_window must have shape \[B, 2\]"):
            fn(*args, 0, np.zeros((2, 2), np.int64), None)
        for bad in ([[0, 6]], [[3, 2]], [[-1, 2]]):
            with pytest.raises(ValueError, match=r"student example 0: window \("):
                fn(*args, 0, None, np.array(bad))


# ----------------------------------------------------------------------------- max_length


@pytest.mark.parametrize("max_length", [-1, 0, 1])
@pytest.mark.parametrize("wp_side", ["teacher", "student"])
def test_max_length_below_special_tokens_names_side(max_length, wp_side):
    wp, other = tiny_wordpiece(), tiny_unigram()  # WordPiece adds [CLS] + [SEP]
    pair = (wp, other) if wp_side == "teacher" else (other, wp)
    aligner = Aligner(*pair, phrases=None)
    msg = rf"max_length={max_length} is too small for the {wp_side} tokenizer.*smallest valid"
    with pytest.raises(ValueError, match=msg + r" max_length is 2"):
        aligner(["hello world"], max_length=max_length)
    if max_length >= 0:  # without specials every non-negative value is valid
        al = aligner(["hello world"], max_length=max_length, add_special_tokens=False)
        assert al.teacher["input_ids"].shape[1] <= max_length
        assert al.student["input_ids"].shape[1] <= max_length
        check_alignment(al)


def test_negative_max_length_without_specials():
    q = qwen()
    with pytest.raises(ValueError, match=r"teacher tokenizer.*smallest valid max_length is 0"):
        Aligner(q, q, phrases=None)(["hello"], max_length=-1)
    with pytest.raises(TypeError, match="max_length must be an int"):
        Aligner(q, q, phrases=None)(["hello"], max_length=2.5)


@pytest.mark.parametrize("max_length", [2, 3, 5])
def test_max_length_at_least_specials_is_obeyed(max_length):
    wp = tiny_wordpiece()
    al = Aligner(wp, mistral(), phrases=None)(
        ["hello world", "a much longer text with many words"], max_length=max_length
    )
    check_alignment(al)
    assert al.teacher["input_ids"].shape[1] <= max_length
    assert al.student["input_ids"].shape[1] <= max_length


# ----------------------------------------------------------------------------- single str


def test_single_str_is_one_example():
    aligner = Aligner(qwen(), mistral(), phrases=None)
    one = aligner("The cat sat on the mat.")
    batch = aligner(["The cat sat on the mat."])
    assert one.texts == ["The cat sat on the mat."]
    assert one.teacher["input_ids"].shape[0] == 1
    for k in ("input_ids", "attention_mask", "offsets"):
        assert torch.equal(one.teacher[k], batch.teacher[k])
        assert torch.equal(one.student[k], batch.student[k])
    for g in ("word", "phrase"):
        for f in ("cu_units", "spans", "teacher_ranges", "student_ranges"):
            assert torch.equal(getattr(one.units[g], f), getattr(batch.units[g], f))
    assert one.units["word"].batch_size == 1 and one.units["word"].num_units == 6
    # Cached spans for a single str: one dict (or a list of one).
    s = {"word": [[4, 7]], "phrase": []}
    for spans in (s, [s]):
        al = aligner("The cat sat", spans=spans)
        assert al.units["word"].spans.tolist() == [[4, 7]]
    with pytest.raises(TypeError, match="str or a list of str"):
        aligner([b"bytes"])
