"""The study's arms: which loss terms each adds to the student's CE, and the terms that
``structural_loss`` does not compute as such (Hid alone, ULD from the cached teacher top-k).

To add an arm, add an ``Arm`` to ``ARMS`` (and a term in ``run.step_loss`` if it is a new kind
of loss).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F


@dataclasses.dataclass(frozen=True)
class Arm:
    """Which loss terms an arm adds to the student's CE."""

    name: str
    dsa: bool = False
    hid: bool = False
    kd: bool = False

    @property
    def mta(self) -> bool:
        return self.dsa or self.hid

    @property
    def needs_projectors(self) -> bool:
        return self.hid


ARMS: dict[str, Arm] = {
    a.name: a
    for a in (
        Arm("ce"),
        Arm("ce+mta", dsa=True, hid=True),
        Arm("ce+dsa", dsa=True),
        Arm("ce+hid", hid=True),
        # cross-tokenizer logit KD (ULD at shared token boundaries), without and with L_MTA.
        # To add an arm, add an Arm here (and a term in ``run.step_loss`` if it is a new kind
        # of loss).
        Arm("ce+kd", kd=True),
        Arm("ce+kd+mta", dsa=True, hid=True, kd=True),
    )
}
DEFAULT_ARMS = tuple(ARMS)
# Paired comparisons besides "every arm vs ce": (arm, its base). Same seed = same data order.
COMPARISONS: tuple[tuple[str, str], ...] = (("ce+kd+mta", "ce+kd"),)


def hid_only(
    s_hs: Sequence[torch.Tensor],
    t_hs: Sequence[torch.Tensor],
    alignment: Any,
    schedule: Any,
    projectors: Sequence[torch.nn.Module],
    *,
    hid_weight: float,
    span_weight: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``w_span · mean_pairs(λ_hid · L_Hid)``: L_MTA's Hid half alone (unit-level Hid, salience
    weighting), written with the package's public ops exactly as ``structural_loss`` computes
    it (checked against its ``hid/i`` components on the first step of every run)."""
    from mta_ext import segment_pool, token_salience
    from mta_ext.losses import unit_weights

    mask_t = alignment.teacher["attention_mask"]
    mask_s = alignment.student["attention_mask"]
    terms, comps = [], {}
    for i, p in enumerate(schedule):
        ht, hs = t_hs[p.teacher_layer], s_hs[p.student_layer]
        B, Tt, Dt = ht.shape
        Ts, Ds = hs.shape[1], hs.shape[2]
        wt = token_salience(ht, mask_t).reshape(B * Tt)
        ws = token_salience(hs, mask_s).reshape(B * Ts)
        lay = alignment.units[p.granularity]
        ut = segment_pool(ht.reshape(B * Tt, Dt), lay.teacher_ranges, wt)
        us = segment_pool(hs.reshape(B * Ts, Ds), lay.student_ranges, ws)
        W = unit_weights(wt, lay.teacher_ranges, lay.cu_units)
        proj = projectors[i]
        pu = proj(us.to(next(proj.parameters()).dtype))
        cos = F.cosine_similarity(pu.float(), ut.float(), dim=-1, eps=1e-5)
        lh = (W * (1.0 - cos)).sum() / W.sum().clamp_min(1e-5)
        comps[f"hid/{i}"] = lh.detach()
        terms.append(hid_weight * lh)
    return span_weight * torch.stack(terms).mean(), comps


def mean_of(comps: dict[str, torch.Tensor], kind: str) -> float | None:
    vals = [float(v) for k, v in comps.items() if k.startswith(kind + "/")]
    return sum(vals) / len(vals) if vals else None


def kd_uld(
    student_logits: torch.Tensor, teacher_topk: torch.Tensor, alignment: Any
) -> torch.Tensor:
    """The package's ULD at shared token boundaries with the teacher side read from the cache:
    ``uld_kd``'s loss, with ``sorted_top_probs`` of the teacher logits precomputed."""
    from mta_ext.logit_kd import boundary_pairs, uld_distance_to_probs

    t, s = alignment.teacher, alignment.student
    t_rows, s_rows = boundary_pairs(
        t["offsets"], t["attention_mask"], s["offsets"], s["attention_mask"]
    )
    k = teacher_topk.shape[-1]
    pt = teacher_topk.reshape(-1, k)[t_rows.to(teacher_topk.device)]
    return uld_distance_to_probs(student_logits, s_rows, pt)
