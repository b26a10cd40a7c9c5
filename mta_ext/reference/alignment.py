"""Slow, obvious pure-Python twin of the C++ alignment merge (``mta_ext._align.align``).

For every candidate unit and every token it asks the question of docs/DESIGN.md §3 directly:
is this token inside the unit, crossing its border, or elsewhere? No sorting tricks, no
prefix arrays. Same inputs, same outputs and the same drop-reason codes as the engine.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .._reasons import KEPT, REASONS  # noqa: F401  (re-exported: the codes it returns)

_TRUNCATED, _STRADDLE, _NO_TOKEN, _SPECIAL = 1, 2, 3, 4


def _side_tokens(text: str, offsets: np.ndarray, mask: np.ndarray, side: str, b: int):
    """Validate one side of example b; return [(t, a, e)] for the real tokens."""
    ones = [t for t, v in enumerate(mask.tolist()) if v == 1]
    for t, v in enumerate(mask.tolist()):
        if v not in (0, 1):
            raise ValueError(f"{side} example {b}: attention_mask holds {v} at position {t}")
    if ones and ones != list(range(ones[0], ones[-1] + 1)):
        raise ValueError(f"{side} example {b}: attention_mask is not one contiguous block")
    tokens = []
    prev = None
    for t in ones:
        a, e = int(offsets[t, 0]), int(offsets[t, 1])
        if a < 0 or e < a or e > len(text):
            raise ValueError(
                f"{side} example {b}: offsets of token {t} = ({a}, {e}) are "
                f"outside the text of length {len(text)}"
            )
        if a < e:
            if prev is not None and (a < prev[0] or e < prev[1]):
                raise ValueError(f"{side} example {b}: offsets not monotone at token {t}")
            prev = (a, e)
        tokens.append((t, a, e))
    return tokens


def _classify(text: str, tokens, a: int, b: int, window: tuple[int, int]) -> tuple[int, int, int]:
    """(code, first token, end token) of unit [a, b) on one side; code 0 when owned."""
    nonempty = [(t, s, e) for t, s, e in tokens if s < e]
    if not nonempty or a < min(s for _, s, _ in nonempty) or b > max(e for _, _, e in nonempty):
        return _TRUNCATED, 0, 0
    if a < window[0] or b > window[1]:  # a token removed by truncation overlaps the unit
        return _TRUNCATED, 0, 0
    owned = []
    for t, s, e in nonempty:
        while s < e and text[s].isspace():  # whitespace glued to the token's start
            s += 1
        if s == e:
            continue  # whitespace-only token
        inside = a <= s and e <= b
        overlaps = s < b and e > a
        if overlaps and not inside:
            return _STRADDLE, 0, 0
        if inside:
            owned.append(t)
    if not owned:
        return _NO_TOKEN, 0, 0
    t0, t1 = min(owned), max(owned) + 1
    if any(s == e for t, s, e in tokens if t0 <= t < t1):
        return _SPECIAL, 0, 0
    return 0, t0, t1


def align_reference(
    texts: Sequence[str],
    teacher_offsets: np.ndarray,
    teacher_mask: np.ndarray,
    student_offsets: np.ndarray,
    student_mask: np.ndarray,
    units: Sequence[tuple[str, np.ndarray, np.ndarray]],
    num_threads: int = 0,
    teacher_window: np.ndarray | None = None,
    student_window: np.ndarray | None = None,
) -> list[dict[str, np.ndarray]]:
    """Twin of ``mta_ext._align.align``.

    Args:
        texts: B strings.
        teacher_offsets / student_offsets: int64 [B, T, 2] char offsets per token.
        teacher_mask / student_mask: int [B, T], 1 real token, 0 pad (one contiguous block).
        units: per granularity (name, cu int64 [B+1], spans int64 [M, 2]).
        num_threads: ignored (signature twin).
        teacher_window / student_window: None or int64 [B, 2], per example the chars [lo, hi)
            that no token removed by truncation overlaps (None: the whole text); a unit
            reaching outside is dropped as truncated.

    Returns:
        One dict per granularity: cu_units [B+1], spans [N,2], teacher_ranges [N,2],
        student_ranges [N,2] (rows of the flattened [B*T] axis), kept_index [N], status int8 [M].
    """
    del num_threads
    sides = []
    for name, off, mask in (
        ("teacher", teacher_offsets, teacher_mask),
        ("student", student_offsets, student_mask),
    ):
        off, mask = np.asarray(off, dtype=np.int64), np.asarray(mask, dtype=np.int64)
        if off.ndim != 3 or off.shape[2] != 2:
            raise ValueError(f"{name}_offsets must have shape [B, T, 2]")
        if mask.shape != off.shape[:2]:
            raise ValueError(f"{name}_mask must have shape [B, T] like {name}_offsets")
        if off.shape[0] != len(texts):
            raise ValueError(f"batch size mismatch: {len(texts)} texts, {off.shape[0]} {name} rows")
        sides.append((name, off, mask))
    (_, t_off, t_mask), (_, s_off, s_mask) = sides
    B = len(texts)
    windows = []
    for name, win in (("teacher", teacher_window), ("student", student_window)):
        if win is None:
            windows.append([(0, len(x)) for x in texts])
            continue
        win = np.asarray(win, dtype=np.int64)
        if win.shape != (B, 2):
            raise ValueError(f"{name}_window must have shape [B, 2] = [{B}, 2]")
        for b, (lo, hi) in enumerate(win.tolist()):
            if not 0 <= lo <= hi <= len(texts[b]):
                raise ValueError(
                    f"{name} example {b}: window ({lo}, {hi}) needs 0 <= lo <= hi <= "
                    f"len(text) = {len(texts[b])}"
                )
        windows.append([tuple(w) for w in win.tolist()])
    toks = [
        (
            _side_tokens(texts[b], t_off[b], t_mask[b], "teacher", b),
            _side_tokens(texts[b], s_off[b], s_mask[b], "student", b),
        )
        for b in range(B)
    ]

    out: list[dict[str, np.ndarray]] = []
    for name, cu, spans in units:
        cu = np.asarray(cu, dtype=np.int64)
        spans = np.asarray(spans, dtype=np.int64)
        if spans.size == 0:
            spans = spans.reshape(0, 2)
        if spans.ndim != 2 or spans.shape[1] != 2:  # as the engine: no reshaping of [M, 3]
            raise ValueError(f"units['{name}']: spans must have shape [M, 2]")
        if cu.shape != (B + 1,) or cu[0] != 0 or cu[-1] != len(spans) or np.any(np.diff(cu) < 0):
            raise ValueError(f"units['{name}']: bad cu")
        status = np.zeros(len(spans), dtype=np.int8)
        kept, tr, sr, new_cu = [], [], [], [0]
        for b in range(B):
            text = texts[b]
            for j in range(cu[b], cu[b + 1]):
                a, e = int(spans[j, 0]), int(spans[j, 1])
                if not 0 <= a < e <= len(text):
                    raise ValueError(
                        f"units['{name}'] example {b}, span {j - cu[b]} = ({a}, {e})"
                        f": need 0 <= a < b <= len(text) = {len(text)}"
                    )
                ct, t0, t1 = _classify(text, toks[b][0], a, e, windows[0][b])
                cs, s0, s1 = _classify(text, toks[b][1], a, e, windows[1][b])
                if ct and (not cs or ct <= cs):
                    status[j] = 2 * ct - 1
                elif cs:
                    status[j] = 2 * cs
                else:
                    kept.append(j)
                    T_t, T_s = t_off.shape[1], s_off.shape[1]
                    tr.append([b * T_t + t0, b * T_t + t1])
                    sr.append([b * T_s + s0, b * T_s + s1])
            new_cu.append(len(kept))
        out.append(
            {
                "cu_units": np.array(new_cu, dtype=np.int64),
                "spans": spans[kept].reshape(-1, 2),
                "teacher_ranges": np.array(tr, dtype=np.int64).reshape(-1, 2),
                "student_ranges": np.array(sr, dtype=np.int64).reshape(-1, 2),
                "kept_index": np.array(kept, dtype=np.int64),
                "status": status,
            }
        )
    return out
