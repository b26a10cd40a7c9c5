"""Why the aligner drops a candidate unit: the status codes of ``mta_ext._align.align``.

One table shared by the production aligner (``Alignment.explain``) and its pure-Python twin
(``mta_ext.reference.alignment``); the C++ engine's ``enum Status`` in ``csrc/align/align.h``
uses the same numbers. Checks run in this order; the first failing one names the reason
(docs/DESIGN.md §3).
"""

from __future__ import annotations

__all__ = ["KEPT", "REASONS"]

KEPT = 0
REASONS: dict[int, str] = {
    1: "truncated (teacher)",
    2: "truncated (student)",
    3: "straddles a teacher token",
    4: "straddles a student token",
    5: "no teacher token",
    6: "no student token",
    7: "special token inside (teacher)",
    8: "special token inside (student)",
}
