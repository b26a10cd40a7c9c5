"""Pure-PyTorch twins of ``structural_loss`` (DESIGN.md §2).

* :func:`structural_loss` — the oracle: padded per-example Python loops over units and pairs,
  straight from the formulas. Same signature and semantics as ``mta_ext.structural_loss``.
* :func:`structural_loss_original` — a faithful re-creation of how the original MTA training code
  computes the loss, used by the benchmarks as baseline (b): batched dense ``[B, T, T]`` salience
  in which padding rows vote and the sum is divided by the padded length, a dense
  ``[N, B*T]`` token x span membership map for pooling, all units of the batch in one big
  ``N x N`` Gram matrix masked to same-example pairs, Python loop over layer pairs. Without
  padding it computes the same value as :func:`structural_loss`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .._layout import get_layout, get_masks
from .relational import relational_loss, unit_weights
from .salience import entropy_weights, token_salience, uniform_weights
from .segment_pool import segment_pool

__all__ = ["structural_loss", "structural_loss_original"]


def _pairs(schedule: Any) -> list[tuple[int, int, str]]:
    return [(int(p[0]), int(p[1]), str(p[2])) for p in schedule]


def _mask_or_ones(mask: torch.Tensor | None, h: torch.Tensor) -> torch.Tensor:
    if mask is None:
        return torch.ones(h.shape[:2], dtype=torch.bool, device=h.device)
    return mask.bool()


def _weights(kind: str, h: torch.Tensor, mask: torch.Tensor, logits, teacher: bool):
    if kind == "salience":
        return token_salience(h.detach(), mask)
    if kind == "uniform" or (kind == "entropy" and not teacher):
        return uniform_weights(mask)
    if kind == "entropy":
        if logits is None:
            raise ValueError("weighting='entropy' needs teacher_logits")
        return entropy_weights(logits.detach(), mask)
    raise ValueError(f"weighting: unknown {kind!r}")


def _hid_unit(p: torch.Tensor, ut: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    cos = F.cosine_similarity(p, ut.to(p.dtype), dim=-1, eps=1e-5)
    return (W.to(p.dtype) * (1 - cos)).sum() / W.sum().clamp_min(1e-5)


def structural_loss(
    student_hidden_states: Sequence[torch.Tensor],
    teacher_hidden_states: Sequence[torch.Tensor],
    alignment: Any,
    schedule: Any,
    *,
    projectors: Sequence[torch.nn.Module] | None = None,
    weighting: str = "salience",
    hid_weight: float = 0.1,
    span_weight: float = 2.0,
    teacher_logits: torch.Tensor | None = None,
    hid: str = "unit",
    teacher_attention_mask: torch.Tensor | None = None,
    student_attention_mask: torch.Tensor | None = None,
    return_components: bool = False,
):
    """Reference ``L_MTA = w_span * mean_pairs(L_DSA + λ_hid L_Hid)``, per-example loops.

    ``hid="token"`` (shared tokenizer, equal ``T``): per-token ``1 - cos(P h^S_t, h^T_t)``,
    pooled per unit with the teacher weights, then weighted by ``W_k`` like the unit level.
    """
    mask_t, mask_s = get_masks(alignment, teacher_attention_mask, student_attention_mask)
    pairs = _pairs(schedule)
    total = 0.0
    comps: dict[str, torch.Tensor] = {}
    for i, (tl, sl, gran) in enumerate(pairs):
        ht, hs = teacher_hidden_states[tl], student_hidden_states[sl]
        B, Tt, Dt = ht.shape
        Ts, Ds = hs.shape[1], hs.shape[2]
        lay = get_layout(alignment, gran)
        mt, ms = _mask_or_ones(mask_t, ht), _mask_or_ones(mask_s, hs)
        wt = _weights(weighting, ht, mt, teacher_logits, True).reshape(-1)
        ws = _weights(weighting, hs, ms, None, False).reshape(-1)
        ut = segment_pool(ht.reshape(B * Tt, Dt), lay.teacher_ranges, wt)
        us = segment_pool(hs.reshape(B * Ts, Ds), lay.student_ranges, ws)
        acc64 = torch.float64 in (ht.dtype, hs.dtype)
        W = unit_weights(wt.double() if acc64 else wt, lay.teacher_ranges, lay.cu_units)
        dsa = relational_loss(us, ut, W, lay.cu_units)
        term = dsa
        comps[f"dsa/{i}"] = dsa.detach()
        if projectors is not None:
            proj = projectors[i]
            if hid == "unit":
                lh = _hid_unit(proj(us.to(hs.dtype)).to(us.dtype), ut, W)
            else:
                # token level: cos per token, pooled per unit with the teacher's weights.
                p = proj(hs.reshape(B * Ts, Ds))
                cos = F.cosine_similarity(p, ht.reshape(B * Tt, Dt).to(p.dtype), dim=-1, eps=1e-5)
                per_unit = segment_pool((1 - cos)[:, None], lay.teacher_ranges, wt)[:, 0]
                lh = (W.to(per_unit.dtype) * per_unit).sum() / W.sum().clamp_min(1e-5)
            comps[f"hid/{i}"] = lh.detach()
            term = term + hid_weight * lh
        total = total + term
    loss = span_weight * total / max(len(pairs), 1)
    return (loss, comps) if return_components else loss


# --------------------------------------------------------------------------------------------
# Baseline (b): the original MTA code's way of computing the same thing.


def _orig_salience(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # [B, T, T] attention in one go; padding queries vote; divided by the padded length.
    with torch.no_grad():
        hn = h / (h.std(dim=-1, keepdim=True) + 1e-5)
        s = hn @ hn.transpose(1, 2) / hn.shape[-1] ** 0.5
        T = h.shape[1]
        eye = torch.eye(T, dtype=torch.bool, device=h.device)
        s = s.masked_fill(~mask.bool()[:, None, :] | eye, float("-inf"))
        return torch.softmax(s, dim=-1).nan_to_num(0.0).mean(dim=1) * mask


def _membership(ranges: torch.Tensor, m: int, dtype) -> torch.Tensor:
    # Dense [N, M] 0/1 map of which flattened token belongs to which unit.
    t = torch.arange(m, device=ranges.device)
    return ((t[None, :] >= ranges[:, :1]) & (t[None, :] < ranges[:, 1:])).to(dtype)


def structural_loss_original(
    student_hidden_states: Sequence[torch.Tensor],
    teacher_hidden_states: Sequence[torch.Tensor],
    alignment: Any,
    schedule: Any,
    *,
    projectors: Sequence[torch.nn.Module] | None = None,
    hid_weight: float = 0.1,
    span_weight: float = 2.0,
    teacher_attention_mask: torch.Tensor | None = None,
    student_attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Baseline (b), salience weighting and unit-level Hid only (see module docstring)."""
    mask_t, mask_s = get_masks(alignment, teacher_attention_mask, student_attention_mask)
    pairs = _pairs(schedule)
    total = 0.0
    for i, (tl, sl, gran) in enumerate(pairs):
        ht, hs = teacher_hidden_states[tl], student_hidden_states[sl]
        B, Tt, Dt = ht.shape
        Ts, Ds = hs.shape[1], hs.shape[2]
        lay = get_layout(alignment, gran)
        mt, ms = _mask_or_ones(mask_t, ht), _mask_or_ones(mask_s, hs)
        wt = _orig_salience(ht, mt).reshape(-1)
        ws = _orig_salience(hs, ms).reshape(-1)
        Mt = _membership(lay.teacher_ranges, B * Tt, ht.dtype)
        Ms = _membership(lay.student_ranges, B * Ts, hs.dtype)
        Mtw, Msw = Mt * wt, Ms * ws
        ut = Mtw @ ht.reshape(B * Tt, Dt) / Mtw.sum(1, keepdim=True).clamp_min(1e-5)
        us = Msw @ hs.reshape(B * Ts, Ds) / Msw.sum(1, keepdim=True).clamp_min(1e-5)
        N = ut.shape[0]
        # example id per unit through a dense one-hot [N, B]
        counts = lay.cu_units[1:] - lay.cu_units[:-1]
        ex = torch.repeat_interleave(torch.arange(B, device=ut.device), counts)
        onehot = F.one_hot(ex, B).to(ht.dtype)
        raw = Mtw.sum(1).detach()
        den = onehot.T @ raw
        W = raw / (onehot @ den).clamp_min(1e-30) * ((onehot @ den) > 0)
        sn, tn = F.normalize(us, dim=-1), F.normalize(ut, dim=-1)
        same = (ex[:, None] == ex[None, :]) & ~torch.eye(N, dtype=torch.bool, device=ut.device)
        ww = W[:, None] * W[None, :] * same
        dsa = (ww * (sn @ sn.T - tn @ tn.T) ** 2).sum() / ww.sum().clamp_min(1e-5)
        term = dsa
        if projectors is not None:
            term = term + hid_weight * _hid_unit(projectors[i](us), ut, W)
        total = total + term
    return span_weight * total / max(len(pairs), 1)
