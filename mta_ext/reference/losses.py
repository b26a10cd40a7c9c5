"""Pure-PyTorch twins of ``structural_loss`` (docs/DESIGN.md §2).

* :func:`structural_loss` — the oracle: per-example Python loops over units and pairs,
  straight from the formulas. Same signature and semantics as ``mta_ext.structural_loss``.
* :func:`structural_loss_original` — the loss of the authors' published MTA training code,
  given a unit layout, computed the way their code computes it (index gather of the covered
  token rows, ``scatter_add_`` pooling by span id, one batch-wide masked Gram, token-level Hid
  on the gathered rows); the benchmarks' baseline. See its docstring for what it is and is not.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
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
# Baseline: the authors' loss, computed the way their published code computes it.


def _orig_salience(h: torch.Tensor, mask: torch.Tensor, pads_vote: bool) -> torch.Tensor:
    """Their token weights: one dense ``[B, T, T]`` attention per layer (std-scaled keys and
    queries, self and padding keys masked), rows re-normalised after masking, averaged over all
    ``T`` queries: padding queries vote and the sum is divided by the padded length.
    ``pads_vote=False``: this library's definition (valid queries only, valid length)."""
    with torch.no_grad():
        h = h.detach()
        m = mask.bool()
        hn = h / (h.std(dim=-1, keepdim=True) + 1e-5)
        s = torch.matmul(hn, hn.transpose(1, 2)) / h.shape[-1] ** 0.5
        T = h.shape[1]
        eye = torch.eye(T, dtype=torch.bool, device=h.device)
        s = s.masked_fill(~m[:, None, :], float("-inf")).masked_fill(eye, float("-inf"))
        a = torch.softmax(s, dim=-1) * m[:, None, :]
        # re-normalised as they do; a one-token example (every key masked) would give NaN there
        a = (a / a.sum(dim=-1, keepdim=True)).nan_to_num_(0.0)
        if pads_vote:
            return a.mean(dim=1)
        a = a * m[:, :, None]
        return a.sum(dim=1) / m.sum(1, keepdim=True).clamp_min(1) * m


def _orig_confidence(logits: torch.Tensor) -> torch.Tensor:
    # The authors' --entropy_weight: 1 - H/log V with H = -sum p log(p + 1e-8); no clamp.
    with torch.no_grad():
        p = torch.softmax(logits, dim=-1)
        ent = -(p * torch.log(p + 1e-8)).sum(-1)
        return 1.0 - ent / math.log(logits.shape[-1])


class _Incidences:
    """The covered (token, span) incidences of one granularity, found as the authors do: a
    ``[B, T, S]`` token-in-span map (``S`` = most units of one example) and its ``nonzero``.

    rows: ``[I]`` flattened token row of each incidence (a token inside two overlapping units
    appears twice); example: ``[I]`` its example; span: ``[I]`` its span id in ``[0, n)`` (spans
    without a covered token are dropped, ids in (example, unit) order); span_example: ``[n]``.
    """

    def __init__(self, lay: Any, mask: torch.Tensor) -> None:
        B, T = mask.shape
        dev = mask.device
        r = lay.teacher_ranges.to(torch.long)
        cu = lay.cu_units.to(torch.long)
        counts = cu[1:] - cu[:-1]
        S = max(int(counts.max()), 1) if counts.numel() else 1
        ex = torch.repeat_interleave(torch.arange(B, device=dev), counts)
        local = torch.arange(r.shape[0], device=dev) - cu[:-1][ex]
        starts = torch.zeros(B, S, dtype=torch.long, device=dev)
        ends = torch.zeros(B, S, dtype=torch.long, device=dev)  # padding spans: empty
        starts[ex, local] = r[:, 0] - ex * T
        ends[ex, local] = r[:, 1] - ex * T
        pos = torch.arange(T, device=dev)[None, :, None]
        in_span = (pos >= starts[:, None, :]) & (pos < ends[:, None, :]) & mask.bool()[:, :, None]
        b, t, k = in_span.nonzero(as_tuple=True)
        self.rows = b * T + t
        self.example = b
        _, self.span = torch.unique(b * S + k, return_inverse=True)
        self.n = int(self.span.max()) + 1 if self.span.numel() else 0
        self.span_example = torch.empty(self.n, dtype=torch.long, device=dev).scatter_(
            0, self.span, b
        )
        self.B = B

    def normalised(self, w: torch.Tensor) -> torch.Tensor:
        """``[I]`` token weights ``w`` (flattened ``[B*T]``) at the incidences, divided by
        their example's sum over its incidences (clamped at 1e-5), by scatter_add_/gather."""
        wi = w.reshape(-1)[self.rows]
        tot = wi.new_zeros(self.B).scatter_add_(0, self.example, wi).clamp(min=1e-5)
        return wi / torch.gather(tot, 0, self.example)

    def span_sum(self, x: torch.Tensor) -> torch.Tensor:
        """``[n, *]`` sums of the incidence rows ``x [I, *]`` per span (``scatter_add_``)."""
        idx = self.span if x.dim() == 1 else self.span[:, None].expand_as(x)
        return x.new_zeros((self.n, *x.shape[1:])).scatter_add_(0, idx, x)


def _orig_pair_loss(
    inc: _Incidences,
    hs: torch.Tensor,
    ht: torch.Tensor,
    ws: torch.Tensor,
    wt: torch.Tensor,
    wu: torch.Tensor,
    projector: torch.nn.Module | None,
    hid_weight: float,
    phase,
) -> torch.Tensor:
    """One layer pair: DSA + λ_hid · token-level Hid on the gathered incidence rows.
    ``ws``/``wt``: per-example normalised pooling weights at the incidences; ``wu``: the
    teacher weights of W and of the Hid (the same as ``wt``, or the normalised confidence)."""
    with phase("orig/gather"):
        t_all = ht.reshape(-1, ht.shape[-1])[inc.rows]  # [I, Dt], a copy
        s_all = hs.reshape(-1, hs.shape[-1])[inc.rows]  # [I, Ds], a copy
    with phase("orig/pool"):
        ut = inc.span_sum(t_all * wt[:, None]) / inc.span_sum(wt).clamp(min=1e-5)[:, None]
        us = inc.span_sum(s_all * ws[:, None]) / inc.span_sum(ws).clamp(min=1e-5)[:, None]
    with phase("orig/dsa"):
        sn, tn = F.normalize(us, dim=-1), F.normalize(ut, dim=-1)
        e = inc.span_example
        keep = (e[:, None] == e[None, :]) & ~torch.eye(inc.n, dtype=torch.bool, device=e.device)
        cs = torch.masked_select(sn @ sn.T, keep)
        ct = torch.masked_select(tn @ tn.T, keep)
        W = inc.span_sum(wu)
        pw = torch.masked_select(W[:, None] * W[None, :], keep)
        dsa = (F.mse_loss(cs, ct, reduction="none") * pw).sum() / pw.sum().clamp(min=1e-5)
    if projector is None:
        return dsa
    with phase("orig/hid"):
        cos = F.cosine_similarity(projector(s_all), t_all, dim=-1, eps=1e-5)
        hid = ((1 - cos) * wu).sum() / wu.sum().clamp(min=1e-5)
    return dsa + hid_weight * hid


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
    profile: bool = False,
) -> torch.Tensor:
    """The authors' MTA loss for a given unit layout, computed the way their published code
    computes it (the benchmarks' baseline for "the original formulation"; docs/DESIGN.md §6).

    Their maths, for one shared tokenizer:

    * salience as one dense ``[B, T, T]`` attention per layer in which **padding queries vote**
      and the column sums are divided by the **padded** length ``T`` (``pads_vote=True``);
    * unit weights ``W`` = a unit's share of its example's weight (an example whose units hold
      no weight gets ``W = 0``);
    * DSA on the cosine Grams of the pooled units, pairs ``i != j`` of the same example;
    * **token-level Hid**: ``1 - cos(P h^S_t, h^T_t)`` (``eps = 1e-5``) on every (token, unit)
      incidence, weighted by the teacher's per-example normalised token weights;
    * ``weighting="entropy"`` (their ``--entropy_weight``): salience pooling on both sides; the
      teacher's ``1 - H(p)/log V`` (``H = -Σ p log(p + 1e-8)``, unclamped) replaces the teacher
      salience in ``W`` and in the token weights of the Hid;
    * per granularity, a Python loop over its layer pairs; ``w_span`` times the mean over pairs.

    Their way of computing it (each step is a ``torch.profiler.record_function`` phase
    ``orig/...`` when ``profile=True``): the salience of every scheduled layer of a granularity
    (``orig/salience``); a ``[B, T, S]`` token-in-span map, its ``nonzero`` (the covered
    (token, span) incidences, duplicates for overlapping units), span ids by ``torch.unique``,
    the per-example normalisation of the gathered token weights by ``scatter_add_`` / ``gather``
    (``orig/index``); per pair, an index gather of the covered rows of both hidden states
    (``orig/gather``), ``scatter_add_`` pooling by span id (``orig/pool``), one batch-wide
    ``n × n`` Gram per side with ``masked_select`` of the same-example pairs (``orig/dsa``),
    the projector on the gathered student rows and the cosine against the gathered teacher rows
    (``orig/hid``). Clamps are theirs (``1e-5`` on the normalised sums).

    What it is not: their span extraction (spaCy parsing, their offset ``+1`` rule for mapping
    spans to tokens) and data pipeline are out of scope; units come from the given layout
    (teacher and student ranges must coincide, as they do with one tokenizer), and, as in their
    code, only tokens under the teacher's attention mask belong to a unit.

    On batches without padding it equals ``mta_ext.structural_loss(..., hid="token")`` with the
    same weighting up to float round-off (the token-level Hid sums are the same sums, grouped
    per unit there). With padding the only difference is the salience: ``pads_vote=False``
    switches to this library's definition (pads do not vote, divide by the valid length), and
    then the two agree on padded batches too.

    Raises:
        ValueError: teacher and student sequence lengths or ranges differ (their loss needs one
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

    def phase(name: str) -> AbstractContextManager:
        return torch.profiler.record_function(name) if profile else nullcontext()

    mask_t, mask_s = get_masks(alignment, teacher_attention_mask, student_attention_mask)
    pairs = _pairs(schedule)
    for i, (tl, sl, _) in enumerate(pairs):
        Tt, Ts = teacher_hidden_states[tl].shape[1], student_hidden_states[sl].shape[1]
        if Tt != Ts:
            raise ValueError(
                f"structural_loss_original: pair {i} has teacher T={Tt} and student T={Ts}; "
                "the authors' token-level loss needs one shared tokenizer"
            )
    conf = None
    if weighting == "entropy":
        assert teacher_logits is not None
        conf = _orig_confidence(teacher_logits.detach())
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(pairs):
        groups.setdefault(p[2], []).append(i)
    total = 0.0
    for gran, members in groups.items():
        lay = get_layout(alignment, gran)
        if not torch.equal(lay.teacher_ranges, lay.student_ranges):
            raise ValueError(
                f"structural_loss_original: alignment['{gran}'] has different teacher and "
                "student ranges; the authors' loss needs one shared tokenizer"
            )
        ht0 = teacher_hidden_states[pairs[members[0]][0]]
        mt = _mask_or_ones(mask_t, ht0)
        with phase("orig/salience"):
            wts = [
                _orig_salience(teacher_hidden_states[pairs[i][0]], mt, pads_vote) for i in members
            ]
            wss = [
                _orig_salience(
                    student_hidden_states[pairs[i][1]],
                    _mask_or_ones(mask_s, student_hidden_states[pairs[i][1]]),
                    pads_vote,
                )
                for i in members
            ]
        with phase("orig/index"):
            inc = _Incidences(lay, mt)
            wts = [inc.normalised(w) for w in wts]
            wss = [inc.normalised(w) for w in wss]
            cn = inc.normalised(conf.to(ht0.dtype)) if conf is not None else None
        for j, i in enumerate(members):
            tl, sl, _ = pairs[i]
            total = total + _orig_pair_loss(
                inc,
                student_hidden_states[sl],
                teacher_hidden_states[tl],
                wss[j],
                wts[j],
                wts[j] if cn is None else cn,
                projectors[i] if projectors is not None else None,
                hid_weight,
                phase,
            )
    return span_weight * total / max(len(pairs), 1)
