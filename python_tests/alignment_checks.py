"""Shared invariant checks for alignment tests: C++ == reference, and docs/DESIGN.md §3 rules."""

from __future__ import annotations

import numpy as np

from mta_ext.alignment import Alignment
from mta_ext.reference.alignment import align_reference


def reference_of(al: Alignment) -> dict[str, dict[str, np.ndarray]]:
    packed = [(g, c["cu"], c["spans"]) for g, c in al.candidates.items()]
    t, s = al.teacher, al.student
    cand = next(iter(al.candidates.values()), {})
    res = align_reference(
        al.texts,
        t["offsets"].numpy(),
        t["attention_mask"].numpy(),
        s["offsets"].numpy(),
        s["attention_mask"].numpy(),
        packed,
        teacher_window=cand.get("teacher_window"),
        student_window=cand.get("student_window"),
    )
    return {g: r for (g, _, _), r in zip(packed, res, strict=True)}


def _check_side(
    text: str, ids_mask: np.ndarray, offs: np.ndarray, row: int, lo: int, hi: int, a: int, b: int
) -> None:
    assert lo < hi, "a kept unit owns no token"
    for t in range(lo, hi):
        assert ids_mask[row, t] == 1, "a pad inside a unit's range"
        ta, tb = int(offs[row, t, 0]), int(offs[row, t, 1])
        assert ta < tb, "a special (empty-offset) token inside a unit's range"
        s = ta
        while s < tb and text[s].isspace():
            s += 1
        if s == tb:
            assert lo < t < hi - 1, "a whitespace-only token at a range's border"
            continue
        assert a <= s and tb <= b, f"token ({ta},{tb}) not inside unit ({a},{b})"


def check_alignment(al: Alignment) -> None:
    """C++ == Python reference, and every kept unit owns >= 1 token inside it on both sides."""
    ref = reference_of(al)
    B = len(al.texts)
    t_mask, s_mask = al.teacher["attention_mask"].numpy(), al.student["attention_mask"].numpy()
    t_off, s_off = al.teacher["offsets"].numpy(), al.student["offsets"].numpy()
    T_t, T_s = t_mask.shape[1], s_mask.shape[1]
    for g, lay in al.units.items():
        r = ref[g]
        np.testing.assert_array_equal(lay.cu_units.numpy(), r["cu_units"])
        np.testing.assert_array_equal(lay.spans.numpy(), r["spans"])
        np.testing.assert_array_equal(lay.teacher_ranges.numpy(), r["teacher_ranges"])
        np.testing.assert_array_equal(lay.student_ranges.numpy(), r["student_ranges"])
        np.testing.assert_array_equal(al.candidates[g]["status"], r["status"])
        assert lay.batch_size == B and lay.cu_units.dtype.is_floating_point is False
        for b in range(B):
            for k in range(int(lay.cu_units[b]), int(lay.cu_units[b + 1])):
                a, e = (int(x) for x in lay.spans[k])
                t0, t1 = (int(x) - b * T_t for x in lay.teacher_ranges[k])
                s0, s1 = (int(x) - b * T_s for x in lay.student_ranges[k])
                assert 0 <= t0 < t1 <= T_t and 0 <= s0 < s1 <= T_s
                _check_side(al.texts[b], t_mask, t_off, b, t0, t1, a, e)
                _check_side(al.texts[b], s_mask, s_off, b, s0, s1, a, e)
