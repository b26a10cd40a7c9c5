"""Pure-PyTorch twins of the unit-level pieces of DSA (docs/DESIGN.md §2.3, §2.4).

Per-example Python loops, written straight from the formulas; autograd does the backward.
"""

from __future__ import annotations

import torch

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
        with ``c_ij = u_i·u_j / (max(‖u_i‖, 1e-12) max(‖u_j‖, 1e-12))`` (``F.normalize``'s
        formula, evaluated on rows scaled by a power of two so that no square overflows).
    """
    acc = _acc_dtype(u_student.dtype, u_teacher.dtype, unit_weights.dtype)
    num = torch.zeros((), dtype=acc, device=u_student.device)
    den = torch.zeros((), dtype=acc, device=u_student.device)
    # The loss is unchanged when every weight is divided by c = max W and the clamp becomes
    # max(den, 1e-5 / c^2): no product W_i W_j overflows (1e30 weights) or underflows.
    wts = unit_weights.detach().to(acc)
    c = wts.max() if wts.numel() else torch.ones((), dtype=acc, device=wts.device)
    c = torch.where(c > 0, c, torch.ones_like(c))
    wts = wts / c
    cu = cu_units.tolist()
    for b in range(len(cu) - 1):
        a, e = cu[b], cu[b + 1]
        n = e - a
        if n < 2:
            continue  # no pair i != j
        s = _normalize(u_student[a:e].to(acc))
        t = _normalize(u_teacher[a:e].to(acc))
        w = wts[a:e]
        ww = w[:, None] * w[None, :]
        off = ~torch.eye(n, dtype=torch.bool, device=ww.device)
        ww = ww * off
        num = num + (ww * (s @ s.T - t @ t.T) ** 2).sum()
        den = den + ww.sum()  # a sum of non-negative products: no cancellation
    return num / torch.maximum(den, 1e-5 / c / c)


def _normalize(x: torch.Tensor) -> torch.Tensor:
    """``F.normalize(x, dim=-1, eps=1e-12)``, with each row scaled by a power of two first so
    that its squared norm neither overflows nor underflows (exact; the gradient flows through)."""
    amax = x.detach().abs().amax(dim=-1, keepdim=True)
    ok = torch.isfinite(amax) & (amax > 0)
    e = torch.where(ok, torch.frexp(torch.where(ok, amax, 1.0)).exponent, 0)
    e = e.clamp_min((-1021 if x.dtype == torch.float64 else -125) + 25)  # 2^-e stays finite
    s = torch.ldexp(torch.ones_like(amax), -e)
    xs = x * s
    # max(|x|, eps) in the scaled domain is max(|x s|, eps s).
    return xs / xs.norm(dim=-1, keepdim=True).clamp_min(1e-12 * s)


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
