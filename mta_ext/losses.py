"""MTA structural losses: DSA (relational geometry of units) + Hid (projected unit alignment).

``L_MTA = w_span · mean over layer pairs (L_DSA + λ_hid · L_Hid)`` (docs/DESIGN.md §2),
computed with the compiled ops: ``token_salience`` for the token weights, ``segment_pool`` to
pool each side's units with its own weights, ``relational_loss`` for DSA. No Python control
flow depends on tensor values and nothing syncs with the host, so
``torch.compile(fullgraph=True)`` traces it and a CUDA step can be captured in a CUDA graph:
the host-side sizes the kernels need come from the layout (``UnitLayout.host``, validated once
on the CPU), never from device memory.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from ._layout import (
    AlignmentLike,
    LayoutHostInfo,
    LayoutTensors,
    get_host_info,
    get_layout,
    get_masks,
    shares_tokenizer,
)
from .ops.relational_loss import relational_loss
from .ops.row_cosine import row_cosine
from .ops.segment_pool import segment_pool
from .ops.token_salience import token_salience
from .schedule import LayerSchedule

__all__ = [
    "HID_LEVELS",
    "WEIGHTINGS",
    "MTALoss",
    "resolve_hid",
    "structural_loss",
    "teacher_confidence",
    "unit_weights",
]

WEIGHTINGS = ("salience", "uniform", "entropy")
HID_LEVELS = ("auto", "unit", "token")


def resolve_hid(hid: str, alignment: AlignmentLike) -> str:
    """The Hid level ``hid`` means for ``alignment``: ``"auto"`` is ``"token"`` when the
    alignment records that both sides share one tokenizer (``alignment.shared_tokenizer``),
    else ``"unit"``; ``"unit"`` / ``"token"`` are returned unchanged, except that ``"token"``
    raises ``ValueError`` for an alignment that records two different tokenizers."""
    if hid not in HID_LEVELS:
        raise ValueError(f"hid must be one of {HID_LEVELS}, got {hid!r}")
    if hid == "token" and getattr(alignment, "shared_tokenizer", None) is False:
        raise ValueError(
            "hid='token' needs one shared tokenizer, but this Alignment was built from two "
            "different tokenizers (alignment.shared_tokenizer is False); use hid='auto' or 'unit'"
        )
    if hid != "auto":
        return hid
    return "token" if shares_tokenizer(alignment) else "unit"


def unit_weights(
    token_weights_flat: torch.Tensor, ranges: torch.Tensor, cu_units: torch.Tensor
) -> torch.Tensor:
    """Unit salience ``W_k = Σ_{t∈k} w_t / Σ_{k'∈b} Σ_{t∈k'} w_t`` (per example; 0/0 -> 0).

    Args:
        token_weights_flat: ``[M]`` non-negative token weights (flattened ``B*T``), detached.
        ranges: ``[N, 2]`` int64 token ranges into that axis.
        cu_units: ``[B+1]`` int64 prefix sums of units per example.

    Returns:
        ``[N]`` float32 (float64 for float64 weights). Each unit's sum, and each example's sum
        over its units, is a float64 segment sum of its own terms (the deterministic
        ``segment_pool`` op: a mean times the count), so no weight elsewhere in the batch
        (a special token outside every unit, a heavier example) cancels a small unit's weight;
        relative error ~1e-16 before the final rounding. No host sync.
    """
    out_dtype = torch.float64 if token_weights_flat.dtype == torch.float64 else torch.float32
    w = token_weights_flat.detach().to(torch.float64).reshape(-1, 1)
    r = ranges.to(torch.long)
    lengths = (r[:, 1] - r[:, 0]).clamp_min(0)
    # segment means (float64 accumulation) times the counts: the per-unit sums
    sums = segment_pool(w, r, None).squeeze(1) * lengths
    cu = cu_units.to(torch.long)
    counts = cu[1:] - cu[:-1]
    per_example = torch.stack([cu[:-1], cu[1:]], dim=1)
    totals = segment_pool(sums.unsqueeze(1), per_example, None).squeeze(1) * counts  # [B]
    # the example total of every unit; output_size keeps repeat_interleave free of a host sync
    den = torch.repeat_interleave(totals, counts, output_size=r.shape[0])
    W = torch.where(den > 0, sums / den.clamp_min(torch.finfo(torch.float64).tiny), 0.0)
    return W.to(out_dtype)


def teacher_confidence(
    teacher_logits: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """The teacher's per-token confidence ``e_t = 1 - H(p_t) / log V`` (detached).

    ``H(p) = -Σ_v p_v log(p_v + 1e-8)`` with ``p = softmax(logits)``, exactly as the authors'
    ``--entropy_weight`` code computes it (docs/DESIGN.md §2.6). Computed in row chunks of about
    16M logits so a 50k vocabulary does not materialise a second ``[B, T, V]`` tensor.

    Args:
        teacher_logits: ``[B, T, V]`` floating logits.
        attention_mask: optional ``[B, T]``; padding gets 0.

    Returns:
        ``[B, T]`` float32 (float64 for float64 logits), clamped to ``>= 0`` (rounding can take
        a near-uniform row a few ulps below 0).
    """
    with torch.no_grad():
        lg = teacher_logits.detach()
        acc = torch.float64 if lg.dtype == torch.float64 else torch.float32
        B, T, V = lg.shape
        flat = lg.reshape(B * T, V)
        rows = max(1, (1 << 24) // max(V, 1))
        neg_ent = []
        for i in range(0, B * T, rows):
            p = torch.softmax(flat[i : i + rows].to(acc), -1)
            neg_ent.append((p * (p + 1e-8).log()).sum(-1))
        ne = torch.cat(neg_ent) if neg_ent else flat.new_zeros(0, dtype=acc)
        e = (1.0 + ne / math.log(V)) if V > 1 else torch.ones_like(ne)
        e = e.clamp_min(0.0).reshape(B, T)
        if attention_mask is not None:
            e = e * attention_mask.to(torch.bool)
        return e


def _pool_weights(kind: str, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # "entropy" pools each side with its own salience (the paper's recipe); e_t only replaces
    # the teacher salience in W and in the token-level Hid weights.
    if kind == "uniform":
        return mask.to(torch.float32)
    return token_salience(hidden, mask)


# The token-level Hid projects only the rows inside some unit whenever the host metadata says
# how many there are and they are not all of them. Measured on the 2-core CPU at the paper's
# shape (83 % and 90 % of the rows covered; one thread, process CPU time, a loaded machine):
# 908-922 ms projecting every row vs 843-886 ms projecting the covered ones. Since the fused
# cosine reads the teacher rows in place (`row_cosine(..., rows)`), only the student rows are
# gathered, and their gradient scattered back: that is what used to cost about what the GEMM
# rows saved above 75 % coverage.


class _GatherRows(torch.autograd.Function):
    """``x[rows]`` for distinct ``rows``, with the backward an ``index_copy_`` into zeros: each
    row receives exactly one gradient row, so no accumulation is needed (autograd's
    ``index_select`` backward is an ``index_add_``, several times slower on the CPU)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(rows)
        ctx.num_rows = x.shape[0]
        return x.index_select(0, rows)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g: torch.Tensor):
        (rows,) = ctx.saved_tensors
        out = g.new_zeros((ctx.num_rows, *g.shape[1:]))
        return out.index_copy_(0, rows, g), None


def _covered_rows(
    ranges: torch.Tensor, num_rows: int, covered: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``covered`` rows of a ``[num_rows]`` axis that lie inside at least one range, in
    order (``[covered]`` int64), and ``ranges`` remapped onto that compressed axis (a unit's
    rows are all covered, so they stay contiguous there). ``covered`` is host metadata
    (``LayoutHostInfo.teacher_covered_rows``): ``nonzero_static`` sizes the result without a
    host sync."""
    r = ranges.to(torch.long)
    one = torch.ones(r.shape[0], dtype=torch.int32, device=r.device)
    diff = torch.zeros(num_rows + 1, dtype=torch.int32, device=r.device)
    diff.index_add_(0, r[:, 0], one).index_add_(0, r[:, 1], -one)
    cov = diff.cumsum(0)[:num_rows] > 0
    rows = torch.nonzero_static(cov, size=covered).squeeze(1)
    rank = torch.cat([cov.new_zeros(1, dtype=torch.long), cov.cumsum(0)])  # rows before t
    start = rank[r[:, 0]]
    return rows, torch.stack([start, start + (r[:, 1] - r[:, 0]).clamp_min(0)], dim=1)


def _token_hid(
    proj: nn.Module,
    x: torch.Tensor,
    h: torch.Tensor,
    ranges: torch.Tensor,
    token_weights: torch.Tensor,
    W: torch.Tensor,
    num_incidences: int | None = None,
    covered: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Token-level Hid ``Σ_k W_k Σ_{t∈k} w_t (1 - cos(P x_t, h_t)) / max(Σ_{t∈k} w_t, 1e-5)
    / max(Σ_k W_k, 1e-5)`` on one shared flattened token axis (``x [M, D_s]``, ``h [M, D_t]``).

    ``covered``: ``(rows, ranges)`` from :func:`_covered_rows`: only those rows are projected
    (each once, however many units hold it) and ``ranges`` index the compressed axis; without
    it (no host metadata, or units covering every row) every row is projected. The cosine is
    the fused op :func:`mta_ext.row_cosine` (the teacher rows read in place at ``rows``), and
    the per-unit pooling of ``1 - cos`` runs on an ``[M, 1]`` column.
    """
    rows = None
    if covered is not None:
        rows, ranges = covered
        x, token_weights = _GatherRows.apply(x, rows), token_weights[rows]
    pdt = _projector_dtype(proj)
    p = proj(x if pdt is None else x.to(pdt))
    # one dtype for the fused cosine (h is read in place at `rows`: no gathered copy)
    cdt = torch.promote_types(p.dtype, h.dtype)
    one_minus = 1.0 - row_cosine(p.to(cdt), h.to(cdt), rows, eps=1e-5)
    per_unit = segment_pool(
        one_minus.unsqueeze(1), ranges, token_weights, num_incidences=num_incidences
    )
    return _weighted_mean(per_unit.squeeze(1), W)


def _cos_dtype(*ts: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in ts) else torch.float32


def _weighted_mean(values: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    W = W.to(values.dtype)
    return (W * values).sum() / W.sum().clamp_min(1e-5)


def _projector_dtype(proj: nn.Module) -> torch.dtype | None:
    for p in proj.parameters():
        return p.dtype
    return None


def _check_projectors(projectors: Sequence[nn.Module], pairs, s_hs, t_hs) -> None:
    if len(projectors) != len(pairs):
        raise ValueError(
            f"projectors: need one per layer pair ({len(pairs)}), got {len(projectors)}"
        )
    for i, (proj, p) in enumerate(zip(projectors, pairs, strict=True)):
        ds, dt = s_hs[p.student_layer].shape[-1], t_hs[p.teacher_layer].shape[-1]
        if isinstance(proj, nn.Linear) and (proj.in_features != ds or proj.out_features != dt):
            swapped = (proj.in_features, proj.out_features) == (dt, ds)
            raise ValueError(
                f"projectors[{i}] (pair {tuple(p)}): expected nn.Linear({ds}, {dt}) mapping the "
                f"student width to the teacher width, got nn.Linear({proj.in_features}, "
                f"{proj.out_features})"
                + (_SWAP_HINT.format(what="the widths are reversed") if swapped else "")
            )


_SWAP_HINT = (
    "; {what}: were student and teacher swapped? The order is "
    "structural_loss(student_hidden_states, teacher_hidden_states, ...) and "
    "MTALoss(...)(student_out, teacher_out, alignment)"
)


def _as_layers(x: Any, name: str) -> tuple[torch.Tensor, ...]:
    """``x`` as a tuple of per-layer hidden states, with a hint for the likely mistakes."""
    if isinstance(x, torch.Tensor):
        what = (
            "one flattened [B*T, D] tensor"
            if x.dim() == 2
            else "one [B, T, D] tensor"
            if x.dim() == 3
            else f"one tensor of shape {tuple(x.shape)}"
        )
        raise TypeError(
            f"{name}: got {what} (shape {tuple(x.shape)}); expected the tuple of every layer's "
            "[B, T, D] hidden states, as HF returns them: "
            "model(..., output_hidden_states=True).hidden_states (index 0 = embeddings). "
            "Keep the batch dimension: the loss flattens [B, T] itself"
        )
    try:
        hs = tuple(x)
    except TypeError:
        raise TypeError(
            f"{name}: expected a tuple of [B, T, D] tensors, got {type(x).__name__}"
        ) from None
    if not all(isinstance(h, torch.Tensor) for h in hs):
        raise TypeError(f"{name}: expected a tuple of [B, T, D] tensors")
    return hs


def _check_inputs(s_hs, t_hs, masks, lays: Mapping[str, LayoutTensors], pairs, hid, logits):
    B = t_hs[0].shape[0]
    dev = t_hs[0].device
    for side, hs in (("teacher", t_hs), ("student", s_hs)):
        for i, h in enumerate(hs):
            if h.dim() != 3:
                raise ValueError(
                    f"{side}_hidden_states[{i}] must be [B, T, D], got shape {tuple(h.shape)}"
                )
            if h.shape[0] != B:
                raise ValueError(
                    f"mismatched batch sizes: {side}_hidden_states[{i}] has batch {h.shape[0]}, "
                    f"teacher_hidden_states[0] has {B}"
                )
            if h.device != dev:
                raise ValueError(
                    f"{side}_hidden_states[{i}] is on {h.device} but teacher_hidden_states[0] "
                    f"is on {dev}"
                )
    for side, m, hs in (("teacher", masks[0], t_hs), ("student", masks[1], s_hs)):
        if m is not None:
            if tuple(m.shape) != tuple(hs[0].shape[:2]):
                other = masks[1] if side == "teacher" else masks[0]
                hint = ""
                if other is not None and tuple(other.shape) == tuple(hs[0].shape[:2]):
                    hint = _SWAP_HINT.format(what=f"the {side} hidden states fit the other mask")
                raise ValueError(
                    f"{side} attention_mask has shape {tuple(m.shape)}, expected [B, T] = "
                    f"{tuple(hs[0].shape[:2])} like the {side} hidden states{hint}"
                )
            if m.device != dev:
                raise ValueError(f"{side} attention_mask is on {m.device}, hidden states on {dev}")
    for gran, lay in lays.items():
        for name, t in lay._asdict().items():
            if t.device != dev:
                raise ValueError(
                    f"alignment['{gran}'].{name} is on {t.device} but the hidden states are on "
                    f"{dev}; move the alignment to the model's device (e.g. alignment.to(device))"
                )
        if lay.cu_units.shape[0] != B + 1:
            raise ValueError(
                f"mismatched batch sizes: alignment['{gran}'].cu_units has "
                f"{lay.cu_units.shape[0]} entries, expected B + 1 = {B + 1}"
            )
        if lay.teacher_ranges.shape != lay.student_ranges.shape:
            raise ValueError(
                f"alignment['{gran}']: teacher_ranges {tuple(lay.teacher_ranges.shape)} and "
                f"student_ranges {tuple(lay.student_ranges.shape)} must both be [N, 2]"
            )
    if hid == "token":
        for p in pairs:
            tt, ts = t_hs[p.teacher_layer].shape[1], s_hs[p.student_layer].shape[1]
            if tt != ts:
                raise ValueError(
                    f"hid='token' needs one shared tokenizer (equal T), but pair {tuple(p)} has "
                    f"teacher T={tt} and student T={ts}; use hid='unit'"
                )
    if logits is not None and tuple(logits.shape[:2]) != tuple(t_hs[0].shape[:2]):
        raise ValueError(
            f"teacher_logits must be [B, T, V] with [B, T] = {tuple(t_hs[0].shape[:2])}, got "
            f"{tuple(logits.shape)}"
        )


def _check_host_info(hosts: Mapping[str, LayoutHostInfo | None], s_hs, t_hs, pairs) -> None:
    # Free host-side bound checks from the layout's host metadata: the ranges must fit each
    # side's flattened [B*T] axis (on CUDA the kernels do not check values outside debug mode).
    for p in pairs:
        info = hosts.get(p.granularity)
        if info is None:
            continue
        for side, end, h in (
            ("teacher", info.teacher_max_end, t_hs[p.teacher_layer]),
            ("student", info.student_max_end, s_hs[p.student_layer]),
        ):
            rows = h.shape[0] * h.shape[1]
            if end > rows:
                raise ValueError(
                    f"alignment['{p.granularity}'].{side}_ranges reach token {end} but the "
                    f"{side} hidden states have B*T = {rows} rows: was the alignment built for "
                    "this batch (same max_length, same padding)?"
                )


def structural_loss(
    student_hidden_states: Sequence[torch.Tensor],
    teacher_hidden_states: Sequence[torch.Tensor],
    alignment: AlignmentLike,
    schedule: LayerSchedule | Sequence[tuple[int, int, str]],
    *,
    projectors: Sequence[nn.Module] | None = None,
    weighting: str = "salience",
    hid_weight: float = 0.1,
    span_weight: float = 2.0,
    teacher_logits: torch.Tensor | None = None,
    hid: str = "auto",
    teacher_attention_mask: torch.Tensor | None = None,
    student_attention_mask: torch.Tensor | None = None,
    return_components: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, Any]]:
    """MTA structural loss ``w_span · mean_pairs(L_DSA + λ_hid · L_Hid)`` (docs/DESIGN.md §2).

    Args:
        student_hidden_states: tuple of ``[B, T_s, D_s]`` as HF returns with
            ``output_hidden_states=True`` (index 0 = embeddings). Gradients flow into these.
        teacher_hidden_states: tuple of ``[B, T_t, D_t]`` (usually computed under no_grad).
        alignment: an ``Alignment`` (``.units`` dict of per-granularity layouts, ``.teacher`` /
            ``.student`` encodings holding ``attention_mask``) or a plain dict
            ``{"word": layout, "phrase": layout}``. A layout has ``cu_units [B+1]``,
            ``teacher_ranges [N,2]`` and ``student_ranges [N,2]`` (int64, ranges into each
            side's flattened ``B*T`` axis), on the hidden states' device.
        schedule: a :class:`LayerSchedule` or a list of ``(teacher_layer, student_layer,
            granularity)``.
        projectors: one module per pair mapping ``D_s -> D_t`` (``nn.Linear(D_s, D_t)``) for
            the Hid term, or ``None`` to skip Hid.
        weighting: ``"salience"`` (each side pools with its own token salience; W and the
            token-level Hid use the teacher's), ``"uniform"`` (plain means), or
            ``"entropy"``: the paper's ``--entropy_weight`` recipe. Both sides still pool with
            their own salience; the teacher's confidence ``e_t = 1 - H(p_t)/log V`` (from
            ``teacher_logits``, see :func:`teacher_confidence`) replaces the teacher salience
            in the unit weights ``W`` and in the token weights of the token-level Hid.
        hid_weight: λ_hid. span_weight: w_span.
        teacher_logits: ``[B, T_t, V]``, needed for ``weighting="entropy"``.
        hid: ``"auto"`` (default): ``"token"`` when the alignment records that both sides share
            one tokenizer (``alignment.shared_tokenizer``, see :func:`resolve_hid`), else
            ``"unit"``. ``"unit"``: ``1 - cos(P u^S_k, u^T_k)`` on pooled units (works across
            tokenizers). ``"token"`` (shared tokenizer, equal ``T``, identical ranges): per-token
            ``1 - cos(P h^S_t, h^T_t)``, pooled per unit with the teacher's token weights, then
            weighted by ``W_k`` (the authors' formulation).
        teacher_attention_mask, student_attention_mask: ``[B, T]`` masks; default: taken from
            the alignment's encodings, else every token is treated as valid.
        return_components: also return the components: ``"dsa/i"`` and ``"hid/i"`` (detached
            0-dim tensors, per pair), and with projectors ``"hid_level"``: the string
            ``"token"`` or ``"unit"``, the Hid level used.

    Returns:
        0-dim float32 tensor (float64 for float64 inputs), or ``(loss, components)``. A batch
        without shared units gives exactly 0 with zero gradients.

    Raises:
        ValueError: schedule layer out of range, mismatched batch sizes, alignment on another
        device, wrong projector widths, missing granularity, bad options.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    hid = resolve_hid(hid, alignment)
    if weighting == "entropy" and teacher_logits is None:
        raise ValueError("weighting='entropy' needs teacher_logits=[B, T_t, V]")
    sched = schedule if isinstance(schedule, LayerSchedule) else LayerSchedule(schedule)
    s_hs = _as_layers(student_hidden_states, "student_hidden_states")
    t_hs = _as_layers(teacher_hidden_states, "teacher_hidden_states")
    try:
        sched.validate(len(t_hs), len(s_hs))
    except ValueError as exc:
        try:
            sched.validate(len(s_hs), len(t_hs))
        except ValueError:
            raise exc from None
        hint = _SWAP_HINT.format(what="the schedule fits with the two swapped")
        raise ValueError(f"{exc}{hint}") from None
    lays = {g: get_layout(alignment, g) for g in sched.granularities}
    # Host-side ints of each layout (plan sizes, CSR sizes): the CUDA kernels never read device
    # memory for them. None (a plain dict layout): the ops compute them, a host sync each.
    hosts = {g: get_host_info(alignment, g) for g in sched.granularities}
    mask_t, mask_s = get_masks(alignment, teacher_attention_mask, student_attention_mask)
    _check_inputs(s_hs, t_hs, (mask_t, mask_s), lays, sched, hid, teacher_logits)
    _check_host_info(hosts, s_hs, t_hs, sched)
    if projectors is not None:
        _check_projectors(projectors, sched, s_hs, t_hs)

    def full_mask(m, h):
        return torch.ones(h.shape[:2], dtype=torch.bool, device=h.device) if m is None else m

    # The teacher's confidence (entropy weighting) is per token, shared by every layer pair.
    conf = None
    if weighting == "entropy":
        assert teacher_logits is not None
        conf = teacher_confidence(teacher_logits, full_mask(mask_t, t_hs[0])).reshape(-1)
    # Pooling weights are per layer: cache them when several pairs share a layer.
    t_w: dict[int, torch.Tensor] = {}
    s_w: dict[int, torch.Tensor] = {}
    comps: dict[str, Any] = {}
    covered: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # per granularity, token Hid
    unit_w: dict[tuple[int, str, bool], torch.Tensor] = {}
    terms = []
    for i, p in enumerate(sched):
        ht, hs = t_hs[p.teacher_layer], s_hs[p.student_layer]
        B, Tt, Dt = ht.shape
        Ts, Ds = hs.shape[1], hs.shape[2]
        if p.teacher_layer not in t_w:
            t_w[p.teacher_layer] = _pool_weights(weighting, ht, full_mask(mask_t, ht)).reshape(-1)
        if p.student_layer not in s_w:
            s_w[p.student_layer] = _pool_weights(weighting, hs, full_mask(mask_s, hs)).reshape(-1)
        wt, ws = t_w[p.teacher_layer], s_w[p.student_layer]
        # Teacher token weights of W and of the token-level Hid: the teacher's pooling weights,
        # or its confidence e_t under entropy weighting (the paper's recipe).
        wu = wt if conf is None else conf
        lay = lays[p.granularity]
        info = hosts[p.granularity]
        t_inc = info.teacher_incidences if info is not None else None
        s_inc = info.student_incidences if info is not None else None
        ut = segment_pool(ht.reshape(B * Tt, Dt), lay.teacher_ranges, wt, num_incidences=t_inc)
        us = segment_pool(hs.reshape(B * Ts, Ds), lay.student_ranges, ws, num_incidences=s_inc)
        # W in the accumulation type of the units (float64 only for float64 hidden states).
        acc64 = torch.float64 in (ht.dtype, hs.dtype)
        # W depends on the teacher token weights and the units only: pairs that share both
        # (entropy weighting: one confidence for every pair) compute it once.
        w_key = (-1 if conf is not None else p.teacher_layer, p.granularity, acc64)
        if w_key not in unit_w:
            unit_w[w_key] = unit_weights(
                wu.double() if acc64 else wu, lay.teacher_ranges, lay.cu_units
            )
        W = unit_w[w_key]
        plan = info.plan_sizes if info is not None else None
        term = relational_loss(us, ut, W, lay.cu_units, plan_sizes=plan)
        comps[f"dsa/{i}"] = term.detach()
        if projectors is not None:
            proj = projectors[i]
            if hid == "unit":
                pdt = _projector_dtype(proj)
                pu = proj(us if pdt is None else us.to(pdt))
                cdt = _cos_dtype(pu, ut)
                cos = F.cosine_similarity(pu.to(cdt), ut.to(cdt), dim=-1, eps=1e-5)
                lh = _weighted_mean(1.0 - cos, W)
            else:
                cov = None
                n_cov = info.teacher_covered_rows if info is not None else -1
                if 0 <= n_cov < B * Tt:
                    if p.granularity not in covered:
                        covered[p.granularity] = _covered_rows(lay.teacher_ranges, B * Tt, n_cov)
                    cov = covered[p.granularity]
                lh = _token_hid(
                    proj,
                    hs.reshape(B * Ts, Ds),
                    ht.reshape(B * Tt, Dt),
                    lay.teacher_ranges,
                    wu,
                    W,
                    t_inc,
                    cov,
                )
            comps[f"hid/{i}"] = lh.detach()
            term = term + hid_weight * lh.to(term.dtype)
        terms.append(term)
    if projectors is not None:
        comps["hid_level"] = hid
    loss = span_weight * torch.stack(terms).mean()
    return (loss, comps) if return_components else loss


def _hidden_states(out: Any, side: str) -> tuple[torch.Tensor, ...]:
    hs = (
        out.get("hidden_states") if isinstance(out, Mapping) else getattr(out, "hidden_states", out)
    )
    if hs is None:
        raise ValueError(
            f"{side} output has no hidden_states: call the model with output_hidden_states=True"
        )
    if not isinstance(hs, torch.Tensor) and not isinstance(hs, tuple | list):
        raise TypeError(
            f"{side}: expected a model output with hidden_states or a tuple of [B, T, D] "
            f"tensors, got {type(out).__name__}"
        )
    return _as_layers(hs, side)


def _logits(out: Any) -> torch.Tensor | None:
    return out.get("logits") if isinstance(out, Mapping) else getattr(out, "logits", None)


class MTALoss(nn.Module):
    """The MTA structural loss as a module owning its schedule and Hid projectors.

    The projectors (``nn.Linear(D_s, D_t)`` per layer pair) are trained and saved with whatever
    owns this module (add it to the student wrapper or the optimiser).

    Args:
        schedule: :class:`LayerSchedule` or list of ``(teacher_layer, student_layer, granularity)``.
        student_hidden_size, teacher_hidden_size: widths ``D_s``, ``D_t`` (an int, or one per
            pair). Both ``None``: no projectors, Hid off.
        weighting, hid_weight, span_weight, hid: as in :func:`structural_loss`.
        bias: whether the projectors have a bias.

    Example:
        >>> loss_fn = MTALoss(LayerSchedule.uniform(18, 30), student_hidden_size=576,
        ...                   teacher_hidden_size=640)
        >>> loss = loss_fn(student(**s, output_hidden_states=True),
        ...                teacher(**t, output_hidden_states=True), alignment)
    """

    def __init__(
        self,
        schedule: LayerSchedule | Sequence[tuple[int, int, str]],
        student_hidden_size: int | Sequence[int] | None = None,
        teacher_hidden_size: int | Sequence[int] | None = None,
        *,
        weighting: str = "salience",
        hid_weight: float = 0.1,
        span_weight: float = 2.0,
        hid: str = "auto",
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.schedule = schedule if isinstance(schedule, LayerSchedule) else LayerSchedule(schedule)
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        if hid not in HID_LEVELS:
            raise ValueError(f"hid must be one of {HID_LEVELS}, got {hid!r}")
        self.weighting, self.hid, self.hid_weight, self.span_weight = (
            weighting,
            hid,
            float(hid_weight),
            float(span_weight),
        )
        if (student_hidden_size is None) != (teacher_hidden_size is None):
            raise ValueError("give both student_hidden_size and teacher_hidden_size, or neither")
        self.projectors: nn.ModuleList | None = None
        if student_hidden_size is not None:
            n = len(self.schedule)

            def per_pair(v, name):
                vs = [v] * n if isinstance(v, int) else list(v)
                if len(vs) != n:
                    raise ValueError(f"{name}: need an int or one width per pair ({n})")
                return vs

            ds = per_pair(student_hidden_size, "student_hidden_size")
            dt = per_pair(teacher_hidden_size, "teacher_hidden_size")
            self.projectors = nn.ModuleList(
                nn.Linear(a, b, bias=bias) for a, b in zip(ds, dt, strict=True)
            )

    @classmethod
    def from_configs(
        cls,
        student_config: Any,
        teacher_config: Any,
        schedule: LayerSchedule | None = None,
        **kwargs: Any,
    ) -> MTALoss:
        """Build from HF configs (``num_hidden_layers``, ``hidden_size``); the schedule defaults
        to ``LayerSchedule.uniform(teacher_layers, student_layers)``."""
        if schedule is None:
            schedule = LayerSchedule.uniform(
                teacher_config.num_hidden_layers, student_config.num_hidden_layers
            )
        return cls(schedule, student_config.hidden_size, teacher_config.hidden_size, **kwargs)

    @classmethod
    def paper(
        cls,
        teacher_config: Any,
        student_config: Any,
        **overrides: Any,
    ) -> MTALoss:
        """The authors' GPT-2 1.5B -> 120M recipe in one call (docs/DESIGN.md §6).

        Three layer pairs at 1/2, 3/4 and 4/4 of each model's depth (teacher 24/36/48 <->
        student 6/9/12 for the paper's 48- and 12-layer models, the same fractions rounded for
        other depths: :meth:`LayerSchedule.uniform` with 3 pairs), the first word-level and the
        other two phrase-level; ``span_weight`` (w_span) 2.0, ``hid_weight`` (λ_hid) 0.1;
        ``weighting="entropy"`` (so the teacher output must carry ``logits``);
        ``hid="token"`` (teacher and student must share one tokenizer, as in the paper); one
        ``nn.Linear(D_s, D_t)`` projector with bias per pair.

        Args:
            teacher_config, student_config: HF configs (``num_hidden_layers``,
                ``hidden_size``; GPT-2's ``n_layer`` / ``n_embd`` are aliased by HF).
            **overrides: any :class:`MTALoss` argument to change (``schedule=``, ``hid=``...).

        Example:
            >>> loss_fn = MTALoss.paper(teacher.config, student.config)
            >>> loss_fn.schedule  # for GPT-2 XL (48 layers) -> GPT-2 (12 layers)
            LayerSchedule([(24, 6, 'word'), (36, 9, 'phrase'), (48, 12, 'phrase')])
        """
        kw: dict[str, Any] = {
            "weighting": "entropy",
            "hid": "token",
            "hid_weight": 0.1,
            "span_weight": 2.0,
            "bias": True,
        }
        kw.update(overrides)
        schedule = kw.pop("schedule", None)
        if schedule is None:
            schedule = LayerSchedule.uniform(
                teacher_config.num_hidden_layers, student_config.num_hidden_layers, 3, 1
            )
        return cls(schedule, student_config.hidden_size, teacher_config.hidden_size, **kw)

    def forward(
        self,
        student_out: Any,
        teacher_out: Any,
        alignment: AlignmentLike,
        *,
        teacher_attention_mask: torch.Tensor | None = None,
        student_attention_mask: torch.Tensor | None = None,
        return_components: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, Any]]:
        """``student_out`` / ``teacher_out``: HF model outputs (with ``hidden_states``, and
        ``logits`` for entropy weighting) or tuples of hidden states."""
        logits = _logits(teacher_out) if self.weighting == "entropy" else None
        return structural_loss(
            _hidden_states(student_out, "student_out"),
            _hidden_states(teacher_out, "teacher_out"),
            alignment,
            self.schedule,
            projectors=self.projectors,
            weighting=self.weighting,
            hid_weight=self.hid_weight,
            span_weight=self.span_weight,
            teacher_logits=logits,
            hid=self.hid,
            teacher_attention_mask=teacher_attention_mask,
            student_attention_mask=student_attention_mask,
            return_components=return_components,
        )

    def extra_repr(self) -> str:
        return (
            f"schedule={self.schedule!r}, weighting={self.weighting!r}, hid={self.hid!r}, "
            f"hid_weight={self.hid_weight}, span_weight={self.span_weight}"
        )
