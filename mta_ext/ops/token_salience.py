"""Token salience: ``torch.ops.mta_ext.token_salience`` (no gradient)."""

from __future__ import annotations

import torch

from .. import _loader  # noqa: F401  (loads the compiled ops)
from ._fake_rules import check_devices

__all__ = ["token_salience"]

_ops = torch.ops.mta_ext
_OP = "token_salience"


def _fake_rules(hidden: torch.Tensor, attention_mask: torch.Tensor) -> None:
    # The fake kernel's few shape rules. The argument checks and their messages live in C++
    # (check_token_salience_args, csrc/ops/token_salience.cpp) and run on every real call; the
    # device rule is repeated so that a call mixing a meta tensor with real ones (it dispatches
    # to the fake kernel) fails the same way.
    check_devices(_OP, "hidden", hidden, attention_mask=attention_mask)
    torch._check(hidden.dim() == 3, lambda: f"{_OP}: hidden must have shape [B, T, D]")


def token_salience(
    hidden: torch.Tensor, attention_mask: torch.Tensor, *, key_block: int = 0
) -> torch.Tensor:
    """The attention each valid token receives under parameter-free self-attention.

    ``Ĥ = H / (std_d(H) + 1e-5)`` (Bessel std, 0 when ``D == 1``), ``S = Ĥ Ĥᵀ / √D`` with padding
    keys and the diagonal masked, ``α = softmax_t(S)`` over valid query rows,
    ``w_t = Σ_s α[s, t] / T_valid`` (docs/DESIGN.md §2.1).

    Args:
        hidden: ``[B, T, D]`` float32/float64/float16/bfloat16. Detached: no gradient.
        attention_mask: ``[B, T]`` bool or integer, nonzero = valid, on the device of ``hidden``.
        key_block: 0 = automatic; ``k > 0`` forces the streaming (online-softmax) path with key
            blocks of ``k`` tokens (memory ``O(64·k)`` per thread instead of ``O(64·T)``).

    Returns:
        ``[B, T]`` float32; 0 on padding; each example's weights sum to 1 when it has >= 2 valid
        tokens (0 everywhere otherwise). Accumulation in float32 (float64 for float64 input);
        deterministic (bit-identical across runs).

    Raises:
        TypeError: wrong dtypes. ValueError: wrong ranks/shapes, different devices, a negative
            ``key_block``.
    """
    # A non-tensor reaches the op, whose schema rejects it.
    h = hidden.detach() if isinstance(hidden, torch.Tensor) else hidden
    return _ops.token_salience(h, attention_mask, key_block)


@torch.library.register_fake("mta_ext::token_salience")
def _token_salience_fake(hidden, attention_mask, key_block=0):
    _fake_rules(hidden, attention_mask)
    return hidden.new_empty(hidden.shape[:2], dtype=torch.float32)
