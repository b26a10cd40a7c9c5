"""Which (teacher layer, student layer, granularity) pairs the MTA losses compare.

Layer indices index HF ``hidden_states`` tuples: index 0 is the embedding output, so a model with
``L`` transformer layers has ``L + 1`` hidden states and its last layer is index ``L``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

__all__ = ["GRANULARITIES", "LayerPair", "LayerSchedule"]

GRANULARITIES = ("word", "phrase")


class LayerPair(NamedTuple):
    """One trajectory point: ``hidden_states`` indices on each side and the unit granularity."""

    teacher_layer: int
    student_layer: int
    granularity: str


def _spread(num_layers: int, pairs: int) -> list[int]:
    # Evenly spaced, ending at the last layer: round(L * (k + 2) / (pairs + 1)), k = 0..pairs-1.
    # For L=48, pairs=3 this gives 24/36/48 (the paper's GPT-2 schedule), for L=12: 6/9/12.
    q = pairs + 1
    return [(num_layers * (k + 2) + q // 2) // q for k in range(pairs)]


class LayerSchedule:
    """An ordered list of :class:`LayerPair`; iterable, printable and JSON-serialisable.

    Args:
        pairs: iterable of ``(teacher_layer, student_layer, granularity)`` with non-negative
            ``hidden_states`` indices and granularity ``"word"`` or ``"phrase"``.

    Example:
        >>> s = LayerSchedule.paper_gpt2()
        >>> list(s)[0]
        LayerPair(teacher_layer=24, student_layer=6, granularity='word')
    """

    def __init__(self, pairs: Iterable[tuple[int, int, str]]) -> None:
        checked: list[LayerPair] = []
        for i, p in enumerate(pairs):
            try:
                t, s, g = p
            except (TypeError, ValueError):
                raise ValueError(
                    f"LayerSchedule: pair {i} must be (teacher_layer, student_layer, "
                    f"granularity), got {p!r}"
                ) from None
            for name, v in (("teacher_layer", t), ("student_layer", s)):
                if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                    raise ValueError(
                        f"LayerSchedule: pair {i} {p!r}: {name} must be an int >= 0 "
                        "(a hidden_states index; 0 = embeddings)"
                    )
            if g not in GRANULARITIES:
                raise ValueError(
                    f"LayerSchedule: pair {i} {p!r}: granularity must be one of {GRANULARITIES}"
                )
            checked.append(LayerPair(int(t), int(s), str(g)))
        if not checked:
            raise ValueError("LayerSchedule: needs at least one pair")
        self._pairs: tuple[LayerPair, ...] = tuple(checked)

    # -- constructors -------------------------------------------------------------------------
    @classmethod
    def uniform(
        cls, teacher_layers: int, student_layers: int, pairs: int = 3, word_pairs: int = 1
    ) -> LayerSchedule:
        """``pairs`` pairs spread evenly up to each model's last layer; the first ``word_pairs``
        use word units, the rest phrase units.

        Args:
            teacher_layers: the teacher's number of transformer layers
                (``config.num_hidden_layers``).
            student_layers: same for the student.
        """
        if pairs < 1:
            raise ValueError(f"LayerSchedule.uniform: pairs must be >= 1, got {pairs}")
        if not 0 <= word_pairs <= pairs:
            raise ValueError(f"LayerSchedule.uniform: word_pairs must be in [0, {pairs}]")
        for name, n in (("teacher_layers", teacher_layers), ("student_layers", student_layers)):
            if n < pairs:
                raise ValueError(
                    f"LayerSchedule.uniform: {name}={n} is fewer than pairs={pairs}; pass "
                    f"pairs<={max(n, 1)} or use LayerSchedule.fit, which uses fewer pairs"
                )
        t, s = _spread(teacher_layers, pairs), _spread(student_layers, pairs)
        return cls((t[k], s[k], "word" if k < word_pairs else "phrase") for k in range(pairs))

    @classmethod
    def fit(
        cls, teacher_layers: int, student_layers: int, pairs: int = 3, word_pairs: int = 1
    ) -> LayerSchedule:
        """:meth:`uniform` for any depth >= 1: at most ``pairs`` pairs, fewer when a model has
        fewer layers (``min(pairs, teacher_layers, student_layers)``, ``word_pairs`` clamped
        to that). Compare ``len(result)`` with ``pairs`` to tell whether it was shortened.

        Example:
            >>> LayerSchedule.fit(18, 2)
            LayerSchedule([(12, 1, 'word'), (18, 2, 'phrase')])
        """
        for name, n in (("teacher_layers", teacher_layers), ("student_layers", student_layers)):
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"LayerSchedule.fit: {name} must be an int >= 1, got {n!r}")
        if pairs < 1:
            raise ValueError(f"LayerSchedule.fit: pairs must be >= 1, got {pairs}")
        n = min(pairs, teacher_layers, student_layers)
        return cls.uniform(teacher_layers, student_layers, pairs=n, word_pairs=min(word_pairs, n))

    @classmethod
    def paper_gpt2(cls) -> LayerSchedule:
        """The paper's GPT-2 1.5B -> 120M schedule: teacher 24/36/48 <-> student 6/9/12,
        the first pair word-level, the other two phrase-level."""
        return cls([(24, 6, "word"), (36, 9, "phrase"), (48, 12, "phrase")])

    # -- container protocol -------------------------------------------------------------------
    def __iter__(self) -> Iterator[LayerPair]:
        return iter(self._pairs)

    def __len__(self) -> int:
        return len(self._pairs)

    def __getitem__(self, i: int) -> LayerPair:
        return self._pairs[i]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LayerSchedule) and self._pairs == other._pairs

    def __hash__(self) -> int:
        return hash(self._pairs)

    def __repr__(self) -> str:
        body = ", ".join(
            f"({p.teacher_layer}, {p.student_layer}, {p.granularity!r})" for p in self._pairs
        )
        return f"LayerSchedule([{body}])"

    @property
    def granularities(self) -> tuple[str, ...]:
        """Distinct granularities used, in first-use order."""
        return tuple(dict.fromkeys(p.granularity for p in self._pairs))

    # -- validation ---------------------------------------------------------------------------
    def validate(self, num_teacher_hidden_states: int, num_student_hidden_states: int) -> None:
        """Raise ``ValueError`` naming the first pair whose layer index is out of range.

        Args:
            num_teacher_hidden_states: ``len(teacher_out.hidden_states)`` (layers + 1).
            num_student_hidden_states: ``len(student_out.hidden_states)``.
        """
        for i, p in enumerate(self._pairs):
            for side, idx, n in (
                ("teacher", p.teacher_layer, num_teacher_hidden_states),
                ("student", p.student_layer, num_student_hidden_states),
            ):
                if idx >= n:
                    raise ValueError(
                        f"LayerSchedule pair {i} {tuple(p)}: {side} layer {idx} out of range; "
                        f"the {side} has {n} hidden states (indices 0..{n - 1}, 0 = embeddings)"
                    )

    # -- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """``{"pairs": [[teacher_layer, student_layer, granularity], ...]}``."""
        return {"pairs": [list(p) for p in self._pairs]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LayerSchedule:
        """Inverse of :meth:`to_dict`."""
        if not isinstance(d, dict) or "pairs" not in d:
            raise ValueError("LayerSchedule.from_dict: expected a dict with a 'pairs' list")
        return cls(tuple(p) for p in d["pairs"])

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, s: str) -> LayerSchedule:
        return cls.from_dict(json.loads(s))
