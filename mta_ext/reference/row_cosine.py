"""Reference row cosine (plain PyTorch ops, autograd through them)."""

from __future__ import annotations

import torch


def row_cosine(
    p: torch.Tensor, h: torch.Tensor, rows: torch.Tensor | None = None, eps: float = 1e-5
) -> torch.Tensor:
    """``cos_i = p_i·h_{r_i} / (max(‖p_i‖, eps) max(‖h_{r_i}‖, eps))``; same contract as the op.

    Computed in float32 (float64 for float64 inputs), as ``F.cosine_similarity`` does.
    """
    acc = torch.float64 if torch.float64 in (p.dtype, h.dtype) else torch.float32
    hr = h if rows is None else h[rows.long()]
    a, b = p.to(acc), hr.to(acc)
    den = a.norm(dim=-1).clamp_min(eps) * b.norm(dim=-1).clamp_min(eps)
    return (a * b).sum(-1) / den
