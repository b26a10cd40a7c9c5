"""Pure-PyTorch twins of ``structural_loss`` (docs/DESIGN.md §2).

* :func:`structural_loss` — the oracle: per-example Python loops over units and pairs,
  straight from the formulas. Same signature and semantics as ``mta_ext.structural_loss``.
* :func:`structural_loss_original` — an exact re-creation of the loss of the authors'
  published MTA training code, given a unit layout; the benchmarks' baseline. See its
  docstring for what it is and is not.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .._layout import AlignmentLike, get_layout, get_masks, shares_tokenizer
from .relational_loss import relational_loss, unit_weights
from .segment_pool import segment_pool
from .token_salience import entropy_weights, token_salience, uniform_weights

__all__ = ["structural_loss", "structural_loss_original"]


def _pairs(schedule: Any) -> list[tuple[int, int, str]]:
    return [(int(p[0]), int(p[1]), str(p[2])) for p in schedule]


def _mask_or_ones(mask: torch.Tensor | None, h: torch.Tensor) -> torch.Tensor:
    if mask is None:
        return torch.ones(h.shape[:2], dtype=torch.bool, device=h.device)
    return mask.bool()


def _pool_weights(kind: str, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # "entropy" pools with salience on both sides; the confidence only enters W and token Hid.
    if kind in ("salience", "entropy"):
        return token_salience(h.detach(), mask)
    if kind == "uniform":
        return uniform_weights(mask)
    raise ValueError(f"weighting: unknown {kind!r}")


def _hid_level(hid: str, alignment: AlignmentLike) -> str:
    if hid == "auto":
        return "token" if shares_tokenizer(alignment) else "unit"
    if hid not in ("unit", "token"):
        raise ValueError(f"hid: unknown {hid!r}")
    return hid


def _hid_unit(p: torch.Tensor, ut: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    cos = F.cosine_similarity(p, ut.to(p.dtype), dim=-1, eps=1e-5)
    return (W.to(p.dtype) * (1 - cos)).sum() / W.sum().clamp_min(1e-5)


def structural_loss(
    student_hidden_states: Sequence[torch.Tensor],
    teacher_hidden_states: Sequence[torch.Tensor],
    alignment: AlignmentLike,
    schedule: Any,
    *,
    projectors: Sequence[torch.nn.Module] | None = None,
    weighting: str = "salience",
    hid_weight: float = 0.1,
    span_weight: float = 2.0,
    teacher_logits: torch.Tensor | None = None,
    hid: str = "auto",
    teacher_attention_mask: torch.Tensor | None = None,
    student_attention_mask: torch.Tensor | None = None,
    return_components: bool = False,
):
    """Reference ``L_MTA = w_span * mean_pairs(L_DSA + λ_hid L_Hid)``, per-example loops.

    ``weighting="entropy"``: both sides pool with their own salience; the teacher confidence
    ``e_t`` (:func:`~mta_ext.reference.entropy_weights`) replaces the teacher salience in ``W``
    and in the token weights of the token-level Hid. ``hid="token"`` (shared tokenizer, equal
    ``T``): per-token ``1 - cos(P h^S_t, h^T_t)``, pooled per unit with those token weights,
    then weighted by ``W_k`` like the unit level. ``hid="auto"``: token level when
    ``alignment.shared_tokenizer`` is True, else unit level.
    """
    mask_t, mask_s = get_masks(alignment, teacher_attention_mask, student_attention_mask)
    level = _hid_level(hid, alignment)
    pairs = _pairs(schedule)
    total = 0.0
    comps: dict[str, Any] = {}
    conf = None
    if weighting == "entropy":
        if teacher_logits is None:
            raise ValueError("weighting='entropy' needs teacher_logits")
        ht0 = teacher_hidden_states[0]
        conf = entropy_weights(teacher_logits.detach(), _mask_or_ones(mask_t, ht0)).reshape(-1)
    for i, (tl, sl, gran) in enumerate(pairs):
        ht, hs = teacher_hidden_states[tl], student_hidden_states[sl]
        B, Tt, Dt = ht.shape
        Ts, Ds = hs.shape[1], hs.shape[2]
        lay = get_layout(alignment, gran)
        mt, ms = _mask_or_ones(mask_t, ht), _mask_or_ones(mask_s, hs)
        wt = _pool_weights(weighting, ht, mt).reshape(-1)
        ws = _pool_weights(weighting, hs, ms).reshape(-1)
        wu = wt if conf is None else conf
        ut = segment_pool(ht.reshape(B * Tt, Dt), lay.teacher_ranges, wt)
        us = segment_pool(hs.reshape(B * Ts, Ds), lay.student_ranges, ws)
        acc64 = torch.float64 in (ht.dtype, hs.dtype)
        W = unit_weights(wu.double() if acc64 else wu, lay.teacher_ranges, lay.cu_units)
        dsa = relational_loss(us, ut, W, lay.cu_units)
        term = dsa
        comps[f"dsa/{i}"] = dsa.detach()
        if projectors is not None:
            proj = projectors[i]
            if level == "unit":
                lh = _hid_unit(proj(us.to(hs.dtype)).to(us.dtype), ut, W)
            else:
                # token level: cos per token, pooled per unit with the teacher's token weights.
                p = proj(hs.reshape(B * Ts, Ds))
                cos = F.cosine_similarity(p, ht.reshape(B * Tt, Dt).to(p.dtype), dim=-1, eps=1e-5)
                per_unit = segment_pool((1 - cos)[:, None], lay.teacher_ranges, wu)[:, 0]
                lh = (W.to(per_unit.dtype) * per_unit).sum() / W.sum().clamp_min(1e-5)
            comps[f"hid/{i}"] = lh.detach()
            term = term + hid_weight * lh
        total = total + term
    if projectors is not None:
        comps["hid_level"] = level
    loss = span_weight * total / max(len(pairs), 1)
    return (loss, comps) if return_components else loss


# --------------------------------------------------------------------------------------------
# Baseline: the authors' loss, re-created exactly.


def _orig_salience(h: torch.Tensor, mask: torch.Tensor, pads_vote: bool) -> torch.Tensor:
    # [B, T, T] attention in one go. The authors' code lets padding queries vote and averages
    # over the padded length T; pads_vote=False gives this library's definition instead.
    with torch.no_grad():
        m = mask.bool()
        hn = h / (h.std(dim=-1, keepdim=True) + 1e-5)
        s = hn @ hn.transpose(1, 2) / hn.shape[-1] ** 0.5
        T = h.shape[1]
        eye = torch.eye(T, dtype=torch.bool, device=h.device)
        s = s.masked_fill(~m[:, None, :] | eye, float("-inf"))
        a = torch.softmax(s, dim=-1).nan_to_num(0.0)
        if pads_vote:
            return a.mean(dim=1) * m
        a = a * m[:, :, None]
        return a.sum(dim=1) / m.sum(1, keepdim=True).clamp_min(1) * m


def _orig_confidence(logits: torch.Tensor) -> torch.Tensor:
    # The authors' --entropy_weight: 1 - H/log V with H = -sum p log(p + 1e-8); no clamp.
    with torch.no_grad():
        p = torch.softmax(logits, dim=-1)
        ent = -(p * torch.log(p + 1e-8)).sum(-1)
        return 1.0 - ent / math.log(logits.shape[-1])


def _membership(ranges: torch.Tensor, m: int, dtype) -> torch.Tensor:
    # Dense [N, M] 0/1 map of which flattened token belongs to which unit.
    t = torch.arange(m, device=ranges.device)
    return ((t[None, :] >= ranges[:, :1]) & (t[None, :] < ranges[:, 1:])).to(dtype)


def structural_loss_original(
    student_hidden_states: Sequence[torch.Tensor],
    teacher_hidden_states: Sequence[torch.Tensor],
    alignment: AlignmentLike,
    schedule: Any,
    *,
    projectors: Sequence[torch.nn.Module] | None = None,
    weighting: str = "salience",
    teacher_logits: torch.Tensor | None = None,
    hid_weight: float = 0.1,
    span_weight: float = 2.0,
    teacher_attention_mask: torch.Tensor | None = None,
    student_attention_mask: torch.Tensor | None = None,
    pads_vote: bool = True,
) -> torch.Tensor:
    """The authors' MTA loss, re-created exactly for a given unit layout (the benchmarks'
    baseline for "the original formulation"; docs/DESIGN.md §6).

    What it is: their maths and their way of computing it, for one shared tokenizer —

    * salience as one dense ``[B, T, T]`` attention per side in which **padding queries vote**
      and the column sums are divided by the **padded** length ``T`` (``pads_vote=True``);
    * pooling through a dense ``[N, B*T]`` token x unit membership matrix (one matmul per side);
    * unit weights ``W`` normalised per example through a one-hot ``[N, B]`` map (an example
      whose units hold no weight gets ``W = 0``);
    * DSA on **one batch-wide** ``N x N`` cosine Gram per side, masked to pairs ``i != j`` of
      the same example;
    * **token-level Hid**: ``1 - cos(P h^S_t, h^T_t)`` on every token (``eps = 1e-5``), pooled
      per unit through the membership matrix with the teacher's token weights, then weighted by
      ``W`` and divided by ``max(Σ W, 1e-5)``;
    * ``weighting="entropy"`` (their ``--entropy_weight``): salience pooling on both sides; the
      teacher's ``1 - H(p)/log V`` (``H = -Σ p log(p + 1e-8)``, unclamped) replaces the teacher
      salience in ``W`` and in the token weights of the Hid;
    * a Python loop over layer pairs, ``w_span`` times their mean.

    What it is not: their span extraction (spaCy parsing, their offset ``+1`` rule for mapping
    spans to tokens) and data pipeline are out of scope; units come from the given layout
    (teacher and student ranges must coincide, as they do with one tokenizer).

    On batches without padding it equals ``mta_ext.structural_loss(..., hid="token")`` with the
    same weighting up to float round-off. With padding the only difference is the salience:
    ``pads_vote=False`` switches to this library's definition (pads do not vote, divide by the
    valid length), and then the two agree on padded batches too.

    Raises:
        ValueError: teacher and student sequence lengths differ (token-level Hid needs one
        tokenizer), an alignment that records two different tokenizers, or entropy weighting
        without ``teacher_logits``.
    """
    if weighting not in ("salience", "entropy"):
        raise ValueError(f"weighting must be 'salience' or 'entropy', got {weighting!r}")
    if weighting == "entropy" and teacher_logits is None:
        raise ValueError("weighting='entropy' needs teacher_logits")
    if not isinstance(alignment, Mapping) and getattr(alignment, "shared_tokenizer", None) is False:
        raise ValueError(
            "structural_loss_original: the authors' loss needs one shared tokenizer, but this "
            "Alignment was built from two different tokenizers"
        )
    mask_t, mask_s = get_masks(alignment, teacher_attention_mask, student_attention_mask)
    pairs = _pairs(schedule)
    conf = None
    if weighting == "entropy":
        assert teacher_logits is not None
        conf = _orig_confidence(teacher_logits.detach()).reshape(-1)
    total = 0.0
    for i, (tl, sl, gran) in enumerate(pairs):
        ht, hs = teacher_hidden_states[tl], student_hidden_states[sl]
        B, Tt, Dt = ht.shape
        Ts, Ds = hs.shape[1], hs.shape[2]
        if Tt != Ts:
            raise ValueError(
                f"structural_loss_original: pair {i} has teacher T={Tt} and student T={Ts}; "
                "the authors' token-level loss needs one shared tokenizer"
            )
        lay = get_layout(alignment, gran)
        mt, ms = _mask_or_ones(mask_t, ht), _mask_or_ones(mask_s, hs)
        wt = _orig_salience(ht, mt, pads_vote).reshape(-1)
        ws = _orig_salience(hs, ms, pads_vote).reshape(-1)
        Mt = _membership(lay.teacher_ranges, B * Tt, ht.dtype)
        Ms = _membership(lay.student_ranges, B * Ts, hs.dtype)
        Mtw, Msw = Mt * wt, Ms * ws
        ut = Mtw @ ht.reshape(B * Tt, Dt) / Mtw.sum(1, keepdim=True).clamp_min(1e-5)
        us = Msw @ hs.reshape(B * Ts, Ds) / Msw.sum(1, keepdim=True).clamp_min(1e-5)
        # teacher token weights of W and of the Hid: salience, or the confidence
        Mte = Mtw if conf is None else Mt * conf.to(Mt.dtype)
        N = ut.shape[0]
        # example id per unit through a dense one-hot [N, B]
        counts = lay.cu_units[1:] - lay.cu_units[:-1]
        ex = torch.repeat_interleave(torch.arange(B, device=ut.device), counts)
        onehot = F.one_hot(ex, B).to(ht.dtype)
        raw = Mte.sum(1).detach()
        den = onehot.T @ raw
        W = raw / (onehot @ den).clamp_min(1e-30) * ((onehot @ den) > 0)
        sn, tn = F.normalize(us, dim=-1), F.normalize(ut, dim=-1)
        same = (ex[:, None] == ex[None, :]) & ~torch.eye(N, dtype=torch.bool, device=ut.device)
        ww = W[:, None] * W[None, :] * same
        dsa = (ww * (sn @ sn.T - tn @ tn.T) ** 2).sum() / ww.sum().clamp_min(1e-5)
        term = dsa
        if projectors is not None:
            p = projectors[i](hs.reshape(B * Ts, Ds))
            cos = F.cosine_similarity(p, ht.reshape(B * Tt, Dt).to(p.dtype), dim=-1, eps=1e-5)
            per_unit = (Mte.to(p.dtype) @ (1 - cos)) / Mte.sum(1).clamp_min(1e-5).to(p.dtype)
            lh = (W.to(p.dtype) * per_unit).sum() / W.sum().clamp_min(1e-5)
            term = term + hid_weight * lh
        total = total + term
    return span_weight * total / max(len(pairs), 1)
