"""Read the alignment contract (duck-typed) used by the losses.

The aligner (``mta_ext.alignment``) produces an ``Alignment`` with ``.units`` (a dict
``{"word": UnitLayout, "phrase": UnitLayout}``) and ``.teacher`` / ``.student`` encodings holding
``attention_mask``. A ``UnitLayout`` has ``cu_units [B+1]``, ``teacher_ranges [N,2]`` and
``student_ranges [N,2]`` (int64, token ranges into each side's flattened ``[B*T]`` axis). Users may
also pass a plain dict of layouts, and layouts may be dicts with the same keys. This module only
reads attributes, so the losses do not import the aligner.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import torch

__all__ = ["LayoutTensors", "get_layout", "get_layouts", "get_masks", "shares_tokenizer"]


class LayoutTensors(NamedTuple):
    """The three tensors of one granularity's ragged unit layout."""

    cu_units: torch.Tensor
    teacher_ranges: torch.Tensor
    student_ranges: torch.Tensor


def _field(obj: Any, name: str) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def get_layouts(alignment: Any) -> Mapping[str, Any]:
    """The per-granularity layouts of an ``Alignment`` or of a plain ``{gran: layout}`` dict."""
    units = _field(alignment, "units")
    if units is not None:
        return units
    if isinstance(alignment, Mapping):
        return alignment
    raise TypeError(
        "alignment: expected an Alignment (with .units) or a dict {'word': layout, "
        f"'phrase': layout}}, got {type(alignment).__name__}"
    )


def get_layout(alignment: Any, granularity: str) -> LayoutTensors:
    """The ``LayoutTensors`` of one granularity, with a clear error when it is missing."""
    layouts = get_layouts(alignment)
    if granularity not in layouts:
        raise ValueError(
            f"alignment: no '{granularity}' units (has {sorted(layouts)}); the schedule needs them"
        )
    lay = layouts[granularity]
    vals = []
    for name in LayoutTensors._fields:
        v = _field(lay, name)
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"alignment['{granularity}'].{name}: expected a tensor, got {type(v)}")
        vals.append(v)
    return LayoutTensors(*vals)


def _side_mask(alignment: Any, side: str) -> torch.Tensor | None:
    enc = _field(alignment, side)
    if enc is None:
        return None
    try:
        return enc["attention_mask"]
    except (KeyError, TypeError):
        return _field(enc, "attention_mask")


def get_masks(
    alignment: Any,
    teacher_attention_mask: torch.Tensor | None,
    student_attention_mask: torch.Tensor | None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Each side's ``[B, T]`` attention mask: the keyword wins, else the alignment's encoding.

    ``None`` means "no padding" (every token valid).
    """
    t = teacher_attention_mask
    s = student_attention_mask
    if t is None:
        t = _side_mask(alignment, "teacher")
    if s is None:
        s = _side_mask(alignment, "student")
    return t, s


def shares_tokenizer(alignment: Any) -> bool:
    """Whether the alignment records that teacher and student share one tokenizer.

    True only when ``alignment.shared_tokenizer is True`` (an ``Alignment`` built by an
    ``Aligner`` whose two tokenizers are the same / identical, or by ``align_encoded`` from two
    identical encodings). A plain dict of layouts carries no such fact: False.
    """
    if isinstance(alignment, Mapping):
        return False
    return getattr(alignment, "shared_tokenizer", False) is True
