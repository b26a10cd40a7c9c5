"""MTA structural losses: DSA (relational geometry of units) + Hid (projected unit alignment).

``L_MTA = w_span · mean over layer pairs (L_DSA + λ_hid · L_Hid)`` (DESIGN.md §2), computed with
the compiled ops: ``token_salience`` for the token weights, ``segment_pool`` to pool each side's
units with its own weights, ``relational_loss`` for DSA. No Python control flow depends on tensor
values and nothing syncs with the host, so ``torch.compile(fullgraph=True)`` traces it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._layout import LayoutTensors, get_layout, get_masks
from .ops.relational_loss import relational_loss
from .ops.segment_pool import segment_pool
from .ops.token_salience import token_salience
from .schedule import LayerSchedule

__all__ = ["WEIGHTINGS", "MTALoss", "structural_loss", "unit_weights"]

WEIGHTINGS = ("salience", "uniform", "entropy")
_HID_LEVELS = ("unit", "token")


def unit_weights(
    token_weights_flat: torch.Tensor, ranges: torch.Tensor, cu_units: torch.Tensor
) -> torch.Tensor:
    """Unit salience ``W_k = Σ_{t∈k} w_t / Σ_{k'∈b} Σ_{t∈k'} w_t`` (per example; 0/0 -> 0).

    Args:
        token_weights_flat: ``[M]`` non-negative token weights (flattened ``B*T``), detached.
        ranges: ``[N, 2]`` int64 token ranges into that axis.
        cu_units: ``[B+1]`` int64 prefix sums of units per example.

    Returns:
        ``[N]`` float32 (float64 for float64 weights). Vectorised with float64 prefix sums, so
        it is exact to ~1e-16 relative and has no host sync.
    """
    out_dtype = torch.float64 if token_weights_flat.dtype == torch.float64 else torch.float32
    w = token_weights_flat.detach().to(torch.float64)
    zero = w.new_zeros(1)
    cs = torch.cat([zero, w.cumsum(0)])
    r = ranges.to(torch.long)
    sums = (cs[r[:, 1]] - cs[r[:, 0]]).clamp_min(0.0)
    cu = cu_units.to(torch.long)
    cs_units = torch.cat([zero, sums.cumsum(0)])
    totals = cs_units[cu[1:]] - cs_units[cu[:-1]]  # [B]
    example = torch.searchsorted(cu[1:], torch.arange(r.shape[0], device=r.device), right=True)
    den = totals.clamp_min(0.0)[example]
    W = torch.where(den > 0, sums / den.clamp_min(torch.finfo(torch.float64).tiny), 0.0)
    return W.to(out_dtype)


def _token_weights(
    kind: str,
    hidden: torch.Tensor,
    mask: torch.Tensor,
    logits: torch.Tensor | None,
    teacher: bool,
) -> torch.Tensor:
    if kind == "salience":
        return token_salience(hidden, mask)
    if kind == "uniform" or not teacher:  # "entropy" is teacher-only: the student pools uniformly
        return mask.to(torch.float32)
    with torch.no_grad():  # entropy: 1 - H(p_t) / log V, from the teacher's logits
        lg = logits.detach()
        p = torch.softmax(lg.to(torch.float64 if lg.dtype == torch.float64 else torch.float32), -1)
        ent = torch.special.entr(p).sum(-1)
        V = lg.shape[-1]
        w = (1.0 - ent / math.log(V)) if V > 1 else torch.ones_like(ent)
        return (w.clamp_min(0.0) * mask).to(torch.float32)


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


def structural_loss(
    student_hidden_states: Sequence[torch.Tensor],
    teacher_hidden_states: Sequence[torch.Tensor],
    alignment: Any,
    schedule: LayerSchedule | Sequence[tuple[int, int, str]],
    *,
    projectors: Sequence[nn.Module] | None = None,
    weighting: str = "salience",
    hid_weight: float = 0.1,
    span_weight: float = 2.0,
    teacher_logits: torch.Tensor | None = None,
    hid: str = "unit",
    teacher_attention_mask: torch.Tensor | None = None,
    student_attention_mask: torch.Tensor | None = None,
    return_components: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """MTA structural loss ``w_span · mean_pairs(L_DSA + λ_hid · L_Hid)`` (DESIGN.md §2).

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
        weighting: ``"salience"`` (each side's own token salience), ``"uniform"``, or
            ``"entropy"`` (teacher tokens weighted by ``1 - H(p)/log V`` from
            ``teacher_logits``; the student then pools uniformly).
        hid_weight: λ_hid. span_weight: w_span.
        teacher_logits: ``[B, T_t, V]``, needed for ``weighting="entropy"``.
        hid: ``"unit"`` (cross-tokenizer) or ``"token"`` (shared tokenizer, equal ``T``:
            per-token ``1 - cos(P h^S_t, h^T_t)``, pooled per unit with the teacher weights,
            then weighted by ``W_k``).
        teacher_attention_mask, student_attention_mask: ``[B, T]`` masks; default: taken from
            the alignment's encodings, else every token is treated as valid.
        return_components: also return ``{"dsa/i": ..., "hid/i": ...}`` (detached) per pair.

    Returns:
        0-dim float32 tensor (float64 for float64 inputs), or ``(loss, components)``. A batch
        without shared units gives exactly 0 with zero gradients.

    Raises:
        ValueError: schedule layer out of range, mismatched batch sizes, alignment on another
        device, wrong projector widths, missing granularity, bad options.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if hid not in _HID_LEVELS:
        raise ValueError(f"hid must be one of {_HID_LEVELS}, got {hid!r}")
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
    mask_t, mask_s = get_masks(alignment, teacher_attention_mask, student_attention_mask)
    _check_inputs(s_hs, t_hs, (mask_t, mask_s), lays, sched, hid, teacher_logits)
    if projectors is not None:
        _check_projectors(projectors, sched, s_hs, t_hs)

    def full_mask(m, h):
        return torch.ones(h.shape[:2], dtype=torch.bool, device=h.device) if m is None else m

    # Token weights are per layer: cache them when several pairs share a layer.
    t_w: dict[int, torch.Tensor] = {}
    s_w: dict[int, torch.Tensor] = {}
    comps: dict[str, torch.Tensor] = {}
    terms = []
    for i, p in enumerate(sched):
        ht, hs = t_hs[p.teacher_layer], s_hs[p.student_layer]
        B, Tt, Dt = ht.shape
        Ts, Ds = hs.shape[1], hs.shape[2]
        if p.teacher_layer not in t_w:
            t_w[p.teacher_layer] = _token_weights(
                weighting, ht, full_mask(mask_t, ht), teacher_logits, True
            ).reshape(B * Tt)
        if p.student_layer not in s_w:
            s_w[p.student_layer] = _token_weights(
                weighting, hs, full_mask(mask_s, hs), None, False
            ).reshape(B * Ts)
        wt, ws = t_w[p.teacher_layer], s_w[p.student_layer]
        lay = lays[p.granularity]
        ut = segment_pool(ht.reshape(B * Tt, Dt), lay.teacher_ranges, wt)
        us = segment_pool(hs.reshape(B * Ts, Ds), lay.student_ranges, ws)
        # W in the accumulation type of the units (float64 only for float64 hidden states).
        acc64 = torch.float64 in (ht.dtype, hs.dtype)
        W = unit_weights(wt.double() if acc64 else wt, lay.teacher_ranges, lay.cu_units)
        term = relational_loss(us, ut, W, lay.cu_units)
        comps[f"dsa/{i}"] = term.detach()
        if projectors is not None:
            proj = projectors[i]
            pdt = _projector_dtype(proj)
            if hid == "unit":
                pu = proj(us if pdt is None else us.to(pdt))
                cdt = _cos_dtype(pu, ut)
                cos = F.cosine_similarity(pu.to(cdt), ut.to(cdt), dim=-1, eps=1e-5)
                lh = _weighted_mean(1.0 - cos, W)
            else:
                x = hs.reshape(B * Ts, Ds)
                pt = proj(x if pdt is None else x.to(pdt))
                cdt = _cos_dtype(pt, ht)
                cos = F.cosine_similarity(pt.to(cdt), ht.reshape(B * Tt, Dt).to(cdt), -1, 1e-5)
                per_unit = segment_pool((1.0 - cos).unsqueeze(1), lay.teacher_ranges, wt)
                lh = _weighted_mean(per_unit.squeeze(1), W)
            comps[f"hid/{i}"] = lh.detach()
            term = term + hid_weight * lh.to(term.dtype)
        terms.append(term)
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
        hid: str = "unit",
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.schedule = schedule if isinstance(schedule, LayerSchedule) else LayerSchedule(schedule)
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        if hid not in _HID_LEVELS:
            raise ValueError(f"hid must be one of {_HID_LEVELS}, got {hid!r}")
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

    def forward(
        self,
        student_out: Any,
        teacher_out: Any,
        alignment: Any,
        *,
        teacher_attention_mask: torch.Tensor | None = None,
        student_attention_mask: torch.Tensor | None = None,
        return_components: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
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
