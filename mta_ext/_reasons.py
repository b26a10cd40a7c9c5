"""Why the aligner drops a candidate unit: the status codes of ``mta_ext._align.align``.

The C++ engine owns the codes and their names (``enum Status`` and ``status_reason`` in
``csrc/align/align.h``); this module reads them from the extension, for the production aligner
(``Alignment.explain``), the CLI and the aligner's pure-Python twin
(``mta_ext.reference.alignment``). Checks run in code order; the first failing one names the
reason (docs/DESIGN.md §3).
"""

from __future__ import annotations

from . import _align

__all__ = ["KEPT", "REASONS"]

KEPT: int = int(_align.KEPT)
# {code: reason} for every drop code (>= 1).
REASONS: dict[int, str] = {int(k): str(v) for k, v in _align.REASONS.items()}
