"""Read the alignment contract (duck-typed) used by the losses.

The aligner (``mta_ext.alignment``) produces an ``Alignment`` with ``.units`` (a dict
``{"word": UnitLayout, "phrase": UnitLayout}``) and ``.teacher`` / ``.student`` encodings holding
``attention_mask``. A ``UnitLayout`` has ``cu_units [B+1]``, ``teacher_ranges [N,2]`` and
``student_ranges [N,2]`` (int64, token ranges into each side's flattened ``[B*T]`` axis). Users may
also pass a plain dict of layouts, and layouts may be dicts with the same keys. This module only
reads attributes, so the losses do not import the aligner.

Host metadata (the trust boundary, docs/DESIGN.md "Validation"): a layout built on the CPU is
validated once there and keeps a :class:`LayoutHostInfo` (``layout.host``) of plain ints: the
relational tile plan's sizes, each side's CSR size, each side's largest range end. It stays on
the host after ``.to(device)``, as varlen attention keeps a host ``max_seqlen`` next to the
device ``cu_seqlens``, so the CUDA kernels size their buffers and launches without reading
device memory. A layout without it (a plain dict, or one built from device tensors) still
works: the ops then compute what they need from the device tensors, one documented host sync
each.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple, Protocol, TypeAlias

import numpy as np
import torch

__all__ = [
    "AlignmentContract",
    "AlignmentLike",
    "LayoutHostInfo",
    "LayoutTensors",
    "get_host_info",
    "get_layout",
    "get_layouts",
    "get_masks",
    "layout_host_info",
    "relational_plan_sizes",
    "shares_tokenizer",
]


class AlignmentContract(Protocol):
    """What the losses read from an alignment (``mta_ext.Alignment`` satisfies it).

    units: per granularity (``"word"``, ``"phrase"``) a layout with ``cu_units`` int64 ``[B+1]``,
        ``teacher_ranges`` / ``student_ranges`` int64 ``[N, 2]`` (attributes or mapping keys) and
        optionally ``host`` (:class:`LayoutHostInfo`).
    teacher, student: each side's encoding, a mapping with ``attention_mask`` ``[B, T]``.
    Optional: ``shared_tokenizer`` (bool; read with ``getattr``, default False).
    """

    @property
    def units(self) -> Mapping[str, Any]: ...

    @property
    def teacher(self) -> Mapping[str, torch.Tensor]: ...

    @property
    def student(self) -> Mapping[str, torch.Tensor]: ...


# An alignment as the losses accept it: an object of the contract, or a plain
# ``{granularity: layout}`` mapping (no masks, no shared-tokenizer fact).
AlignmentLike: TypeAlias = AlignmentContract | Mapping[str, Any]


class LayoutTensors(NamedTuple):
    """The three tensors of one granularity's ragged unit layout."""

    cu_units: torch.Tensor
    teacher_ranges: torch.Tensor
    student_ranges: torch.Tensor


class LayoutHostInfo(NamedTuple):
    """Host-side ints of one validated layout (plain Python ints: never on a device).

    plan_sizes: ``(num_tiles, num_row_tiles, gram_size, radial_size)`` of the CUDA
        relational_loss tile plan (:func:`relational_plan_sizes`), its ``plan_sizes`` argument.
    teacher_incidences, student_incidences: ``sum_k (e_k - s_k)`` of each side's ranges, the
        ``num_incidences`` argument of ``segment_pool``.
    teacher_max_end, student_max_end: the largest range end per side (0 without units): the
        ranges fit a ``[B*T]`` axis when ``max_end <= B*T``, checked on the host for free.
    teacher_covered_rows: how many distinct rows of the teacher's flattened axis lie inside at
        least one unit (overlaps counted once; -1: unknown). The token-level Hid projects only
        these rows, sized without a host sync.
    """

    plan_sizes: tuple[int, int, int, int]
    teacher_incidences: int
    student_incidences: int
    teacher_max_end: int
    student_max_end: int
    teacher_covered_rows: int = -1


def relational_plan_sizes(cu_units: Any, num_units: int | None = None) -> tuple[int, int, int, int]:
    """The CUDA relational_loss plan sizes of a host ``cu_units`` ``[B+1]``.

    Computed by the extension's own plan (``torch.ops.mta_ext._relational_loss_plan``: the
    host copy of the code the device runs, csrc/ops/relational_loss_plan.h): per example of
    ``n`` units (clamped into ``[0, num_units]``), one row tile per started tile of units, and
    for ``n >= 2`` the upper triangle of Gram tiles, ``n^2`` E elements and ``n`` radial
    partials per row tile.

    Returns:
        ``(num_tiles, num_row_tiles, gram_size, radial_size)`` as Python ints.
    """
    cu = torch.as_tensor(
        # host sync: CPU only (a layout's own CPU tensors, when it is built)
        cu_units.detach().cpu() if isinstance(cu_units, torch.Tensor) else np.asarray(cu_units),
        dtype=torch.int64,
    ).reshape(-1)
    if cu.numel() < 1:
        raise ValueError("cu_units must have B + 1 >= 1 entries")
    n_all = int(cu[-1]) if num_units is None else int(num_units)
    _tiles, _rows, sizes = torch.ops.mta_ext._relational_loss_plan(cu, n_all)
    a, b, c, d = (int(x) for x in sizes.tolist())  # host sync: CPU only (a CPU tensor)
    return a, b, c, d


def layout_host_info(
    cu_units: torch.Tensor, teacher_ranges: torch.Tensor, student_ranges: torch.Tensor
) -> LayoutHostInfo:
    """Validate a layout on the CPU and return its :class:`LayoutHostInfo`.

    Raises:
        ValueError: ``cu_units`` not ``[B+1]`` with ``cu[0] == 0``, non-decreasing and
        ``cu[-1] == N``; ranges not ``[N, 2]`` with ``0 <= start <= end``.
    """
    # host sync: CPU only (UnitLayout calls this for CPU tensors, when it is built)
    cu = np.asarray(cu_units.detach().cpu(), dtype=np.int64).reshape(-1)
    if cu.size < 1 or cu[0] != 0:
        raise ValueError(f"layout: cu_units must start with 0, got {cu[:1]}")
    bad = np.nonzero(cu[1:] < cu[:-1])[0]  # host sync: CPU only (numpy)
    if bad.size:
        b = int(bad[0])
        raise ValueError(
            f"layout: cu_units must be non-decreasing, but example {b} has cu_units[{b}] = "
            f"{cu[b]} > cu_units[{b + 1}] = {cu[b + 1]}"
        )
    ends = []
    incid = []
    for side, r in (("teacher_ranges", teacher_ranges), ("student_ranges", student_ranges)):
        a = np.asarray(r.detach().cpu(), dtype=np.int64)  # host sync: CPU only
        if a.ndim != 2 or a.shape[1] != 2 or a.shape[0] != cu[-1]:
            raise ValueError(
                f"layout: {side} must be [N, 2] with N = cu_units[-1] = {cu[-1]}, got "
                f"{tuple(a.shape)}"
            )
        bad = np.nonzero((a[:, 0] < 0) | (a[:, 0] > a[:, 1]))[0]  # host sync: CPU only
        if bad.size:
            k = int(bad[0])
            raise ValueError(
                f"layout: {side}[{k}] = ({a[k, 0]}, {a[k, 1]}) is invalid: need 0 <= start <= end"
            )
        ends.append(int(a[:, 1].max()) if a.shape[0] else 0)
        incid.append(int((a[:, 1] - a[:, 0]).sum()))
        if side == "teacher_ranges":
            # distinct covered rows: a difference array over [0, max_end)
            diff = np.zeros(ends[0] + 1, dtype=np.int64)
            np.add.at(diff, a[:, 0], 1)
            np.add.at(diff, a[:, 1], -1)
            covered = int((np.cumsum(diff)[:-1] > 0).sum())
    return LayoutHostInfo(
        plan_sizes=relational_plan_sizes(cu, int(cu[-1])),
        teacher_incidences=incid[0],
        student_incidences=incid[1],
        teacher_max_end=ends[0],
        student_max_end=ends[1],
        teacher_covered_rows=covered,
    )


def get_host_info(alignment: AlignmentLike, granularity: str) -> LayoutHostInfo | None:
    """The :class:`LayoutHostInfo` a layout carries (``layout.host`` or ``layout["host"]``), or
    ``None`` (the ops then compute what they need: one host sync each on CUDA)."""
    lay = get_layouts(alignment).get(granularity)
    info = _field(lay, "host") if lay is not None else None
    return info if isinstance(info, LayoutHostInfo) else None


def _field(obj: Any, name: str) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def get_layouts(alignment: AlignmentLike) -> Mapping[str, Any]:
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


def get_layout(alignment: AlignmentLike, granularity: str) -> LayoutTensors:
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


def _side_mask(alignment: AlignmentLike, side: str) -> torch.Tensor | None:
    enc = _field(alignment, side)
    if enc is None:
        return None
    try:
        return enc["attention_mask"]
    except (KeyError, TypeError):
        return _field(enc, "attention_mask")


def get_masks(
    alignment: AlignmentLike,
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


def shares_tokenizer(alignment: AlignmentLike) -> bool:
    """Whether the alignment records that teacher and student share one tokenizer.

    True only when ``alignment.shared_tokenizer is True`` (an ``Alignment`` built by an
    ``Aligner`` whose two tokenizers are the same / identical, or by ``align_encoded`` from two
    identical encodings). A plain dict of layouts carries no such fact: False.
    """
    if isinstance(alignment, Mapping):
        return False
    return getattr(alignment, "shared_tokenizer", False) is True
