"""Pure-PyTorch twins of the token-weighting schemes (docs/DESIGN.md §2.1, §2.6).

Written for clarity, not speed: the salience twin materialises the full T x T attention matrix
per example. All functions are detached (no gradient) and return float32 ``[B, T]`` (the confidence:
float64 for float64 logits).
"""

from __future__ import annotations

import math

import torch

__all__ = ["entropy_weights", "token_salience", "uniform_weights"]


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    # fp64 inputs are accumulated in fp64, everything else in fp32 (as the kernels do).
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.no_grad()
def token_salience(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Attention each valid token *receives* under parameter-free self-attention.

    Args:
        hidden: ``[B, T, D]`` floating hidden states.
        attention_mask: ``[B, T]`` (bool or integer), nonzero = valid token.

    Returns:
        ``[B, T]`` float32 weights ``w``; ``w[b, t] = 0`` for padding, and every example's valid
        weights sum to 1 when it has >= 2 valid tokens (rows without a valid key are zero).

    Maths: ``Ĥ = H / (std_d(H) + 1e-5)`` (Bessel-corrected std, no centring of H itself);
    ``S = Ĥ Ĥᵀ / √D`` with keys that are padding or the query itself set to ``-inf``;
    ``α = softmax_t(S)``; rows of padding queries are zero; ``w_t = Σ_s α[s,t] / T_valid``.
    For ``D == 1`` Bessel's std is undefined (0/0); we take it as 0 so Ĥ = H / 1e-5.
    """
    B, T, D = hidden.shape
    acc = _acc_dtype(hidden.dtype)
    out = torch.zeros(B, T, dtype=torch.float32, device=hidden.device)
    for b in range(B):
        valid = attention_mask[b].bool()
        n = int(valid.sum())
        if n == 0:
            continue
        h = hidden[b].to(acc)
        if D > 1:
            std = h.std(dim=-1, keepdim=True)
        else:
            std = torch.zeros_like(h)
        hn = h / (std + 1e-5)
        s = hn @ hn.T / math.sqrt(D)
        key_ok = valid[None, :].expand(T, T).clone()
        key_ok.fill_diagonal_(False)
        s = s.masked_fill(~key_ok, float("-inf"))
        row_ok = valid & key_ok.any(dim=1)
        alpha = torch.zeros_like(s)
        alpha[row_ok] = torch.softmax(s[row_ok], dim=-1)
        out[b] = (alpha.sum(dim=0) / n).to(torch.float32)
        out[b][~valid] = 0.0
    return out


@torch.no_grad()
def uniform_weights(attention_mask: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` float32: 1 on valid tokens, 0 on padding."""
    return attention_mask.bool().to(torch.float32)


@torch.no_grad()
def entropy_weights(teacher_logits: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Teacher confidence ``e_t = 1 - H(p_t) / log V`` per token, 0 on padding.

    ``H(p) = -Σ_v p_v log(p_v + 1e-8)``, ``p = softmax(logits)``: the authors' formula.

    Args:
        teacher_logits: ``[B, T, V]`` floating logits.
        attention_mask: ``[B, T]``.

    Returns:
        ``[B, T]`` float32 (float64 for float64 logits), clamped to ``>= 0``.
    """
    V = teacher_logits.shape[-1]
    acc = _acc_dtype(teacher_logits.dtype)
    p = torch.softmax(teacher_logits.to(acc), dim=-1)
    ent = -(p * torch.log(p + 1e-8)).sum(dim=-1)
    w = 1.0 - ent / math.log(V) if V > 1 else torch.ones_like(ent)
    return w.clamp_min(0.0) * attention_mask.bool()
