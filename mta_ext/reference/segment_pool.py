"""Reference weighted segment pooling (vectorised PyTorch: gather + index_add)."""

from __future__ import annotations

import torch


def segment_pool(
    hidden: torch.Tensor, ranges: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """``out[k] = sum_{t in range k} w_t h_t / max(sum w_t, 1e-5)``; same contract as the op.

    Evaluated with each unit's weights divided by the unit's largest weight (exactly the same
    value; no product overflows), as the kernels do.

    Accumulates in float32 (float64 for float64 input) and returns ``hidden.dtype``. Gradients
    flow to ``hidden`` through ordinary autograd; ``weights`` are detached as in the op.
    """
    acc = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    h = hidden.to(acc)
    m, d = h.shape
    n = ranges.shape[0]
    w = torch.ones(m, dtype=acc, device=h.device) if weights is None else weights.detach().to(acc)
    ranges = ranges.to(torch.long)
    starts, ends = ranges[:, 0], ranges[:, 1]
    lengths = ends - starts
    # Expand every unit into its token rows: unit_of[j] is the unit of the j-th (unit, token)
    # pair, token[j] its row.
    unit_of = torch.repeat_interleave(torch.arange(n, device=h.device), lengths)
    first = torch.cumsum(lengths, 0) - lengths
    token = (
        torch.arange(unit_of.numel(), device=h.device)
        - first.repeat_interleave(lengths)
        + starts.repeat_interleave(lengths)
    )
    wt = w[token]
    # Divide each unit's weights by the unit's largest (the result is the same, but no product
    # w_t h_t overflows): den becomes max(sum w / wmax, 1e-5 / wmax).
    wmax = torch.zeros(n, dtype=acc, device=h.device).scatter_reduce(
        0, unit_of, wt, "amax", include_self=False
    )
    pos = wmax > 0
    wmax_safe = torch.where(pos, wmax, torch.ones_like(wmax))
    wt = torch.where(pos[unit_of], wt / wmax_safe[unit_of], torch.zeros_like(wt))
    num = torch.zeros(n, d, dtype=acc, device=h.device).index_add(
        0, unit_of, h[token] * wt[:, None]
    )
    den = torch.zeros(n, dtype=acc, device=h.device).index_add(0, unit_of, wt)
    eps = torch.where(pos, 1e-5 / wmax_safe, torch.full_like(wmax, 1e-5))
    return (num / torch.maximum(den, eps)[:, None]).to(hidden.dtype)
