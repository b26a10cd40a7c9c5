"""Plain-loop twins of ``mta_ext.logit_kd`` (the test oracle).

Per example, walk both token lists, keep the boundary tokens (a usable token whose next usable
token starts at or after its end), match teacher and student boundaries by their end char,
then compute each matched position's distance from full softmaxes with Python loops.
"""

from __future__ import annotations

import torch

__all__ = ["boundary_pairs_reference", "shared_vocab_kl_reference", "uld_reference"]


def _boundary_ends(offsets: torch.Tensor, mask: torch.Tensor, b: int) -> dict[int, int]:
    """end char -> token index of example ``b``'s boundary tokens."""
    T = offsets.shape[1]
    usable = [
        t
        for t in range(T)
        if int(mask[b, t]) != 0 and int(offsets[b, t, 1]) > int(offsets[b, t, 0])
    ]
    out: dict[int, int] = {}
    for n, t in enumerate(usable):
        end = int(offsets[b, t, 1])
        if n + 1 < len(usable) and int(offsets[b, usable[n + 1], 0]) < end:
            continue  # the next token overlaps this one (pieces of one character)
        out[end] = t
    return out


def boundary_pairs_reference(t_offsets, t_mask, s_offsets, s_mask) -> list[tuple[int, int]]:
    """``[(teacher_row, student_row), ...]`` on the flattened ``[B*T]`` axes."""
    pairs = []
    T_t, T_s = t_offsets.shape[1], s_offsets.shape[1]
    for b in range(t_offsets.shape[0]):
        te = _boundary_ends(t_offsets, t_mask, b)
        se = _boundary_ends(s_offsets, s_mask, b)
        for end in sorted(te):
            if end in se:
                pairs.append((b * T_t + te[end], b * T_s + se[end]))
    return pairs


def uld_reference(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    t_offsets: torch.Tensor,
    t_mask: torch.Tensor,
    s_offsets: torch.Tensor,
    s_mask: torch.Tensor,
    *,
    top_k: int,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Mean over matched positions of the L1 distance of the sorted top-k probabilities."""
    pairs = boundary_pairs_reference(t_offsets, t_mask, s_offsets, s_mask)
    s2 = student_logits.reshape(-1, student_logits.shape[-1])
    t2 = teacher_logits.detach().reshape(-1, teacher_logits.shape[-1])
    if not pairs:
        return student_logits.sum() * 0.0
    terms = []
    for tr, sr in pairs:
        ps = torch.softmax(s2[sr].double() / temperature, -1).sort(descending=True).values
        pt = torch.softmax(t2[tr].double() / temperature, -1).sort(descending=True).values
        dist = s2.new_zeros((), dtype=torch.float64)
        for r in range(top_k):
            a = ps[r] if r < ps.numel() else ps.new_zeros(())
            c = pt[r] if r < pt.numel() else pt.new_zeros(())
            dist = dist + abs(a - c)
        terms.append(dist)
    return torch.stack(terms).mean()


def shared_vocab_kl_reference(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    pairs: list[tuple[int, int]],
    teacher_ids: list[int],
    student_ids: list[int],
    temperature: float = 1.0,
) -> torch.Tensor:
    """Mean over ``pairs`` of KL(p_T || p_S), both renormalised over the shared ids."""
    s2 = student_logits.reshape(-1, student_logits.shape[-1])
    t2 = teacher_logits.detach().reshape(-1, teacher_logits.shape[-1])
    terms = []
    for tr, sr in pairs:
        zs = torch.stack([s2[sr, i] for i in student_ids]).double() / temperature
        zt = torch.stack([t2[tr, i] for i in teacher_ids]).double() / temperature
        ps, pt = torch.softmax(zs, 0), torch.softmax(zt, 0)
        kl = pt.new_zeros(())
        for m in range(len(pt)):
            kl = kl + pt[m] * (torch.log(pt[m]) - torch.log(ps[m]))
        terms.append(kl)
    return torch.stack(terms).mean()
