"""Pure-PyTorch twins of the unit-level pieces of DSA (docs/DESIGN.md §2.3, §2.4).

Per-example Python loops, written straight from the formulas; autograd does the backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["relational_loss", "unit_weights"]


def _acc_dtype(*dtypes: torch.dtype) -> torch.dtype:
    return torch.float64 if torch.float64 in dtypes else torch.float32


def relational_loss(
    u_student: torch.Tensor,
    u_teacher: torch.Tensor,
    unit_weights: torch.Tensor,
    cu_units: torch.Tensor,
) -> torch.Tensor:
    """Weighted MSE between the cosine Gram matrices of each example's units.

    Args:
        u_student: ``[N, Ds]`` pooled student units.
        u_teacher: ``[N, Dt]`` pooled teacher units (same units, same order).
        unit_weights: ``[N]`` non-negative unit saliences ``W``.
        cu_units: ``[B+1]`` int64 prefix sums of units per example (``cu[0] = 0``, ``cu[B] = N``).

    Returns:
        0-dim tensor (float64 if any input is float64, else float32):
        ``Σ_b Σ_{i≠j∈b} W_i W_j (c^S_ij - c^T_ij)² / max(Σ_b Σ_{i≠j∈b} W_i W_j, 1e-5)``
        with ``c_ij = cos(u_i, u_j)`` computed as ``F.normalize`` (eps 1e-12) then dot.
    """
    acc = _acc_dtype(u_student.dtype, u_teacher.dtype, unit_weights.dtype)
    num = torch.zeros((), dtype=acc, device=u_student.device)
    den = torch.zeros((), dtype=acc, device=u_student.device)
    cu = cu_units.tolist()
    for b in range(len(cu) - 1):
        a, e = cu[b], cu[b + 1]
        n = e - a
        if n < 2:
            continue  # no pair i != j
        s = F.normalize(u_student[a:e].to(acc), dim=-1, eps=1e-12)
        t = F.normalize(u_teacher[a:e].to(acc), dim=-1, eps=1e-12)
        w = unit_weights[a:e].to(acc)
        ww = w[:, None] * w[None, :]
        off = ~torch.eye(n, dtype=torch.bool, device=ww.device)
        ww = ww * off
        num = num + (ww * (s @ s.T - t @ t.T) ** 2).sum()
        den = den + ww.sum()
    return num / den.clamp_min(1e-5)


@torch.no_grad()
def unit_weights(
    token_weights_flat: torch.Tensor, ranges: torch.Tensor, cu_units: torch.Tensor
) -> torch.Tensor:
    """Unit salience ``W_k = Σ_{t∈k} w_t / Σ_{k'∈b} Σ_{t∈k'} w_t``, normalised per example.

    Args:
        token_weights_flat: ``[M]`` token weights on the flattened ``B*T`` axis.
        ranges: ``[N, 2]`` int64 token ranges ``[s_k, e_k)`` into that axis.
        cu_units: ``[B+1]`` int64 prefix sums of units per example.

    Returns:
        ``[N]`` float32 (float64 for float64 weights); an example whose units hold zero total
        weight gets ``W = 0`` for all its units.
    """
    out_dtype = _acc_dtype(token_weights_flat.dtype)
    w = token_weights_flat.to(torch.float64)  # sums in float64, rounded once at the end
    sums = torch.stack([w[s:e].sum() for s, e in ranges.tolist()]) if len(ranges) else w[:0]
    out = torch.zeros_like(sums)
    cu = cu_units.tolist()
    for b in range(len(cu) - 1):
        a, e = cu[b], cu[b + 1]
        tot = sums[a:e].sum()
        if e > a and tot > 0:
            out[a:e] = sums[a:e] / tot
    return out.to(out_dtype)
