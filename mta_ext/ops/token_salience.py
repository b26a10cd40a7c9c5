"""Token salience: ``torch.ops.mta_ext.token_salience`` (no gradient)."""

from __future__ import annotations

import torch

from .. import _loader  # noqa: F401  (loads the compiled ops)

__all__ = ["token_salience"]

_ops = torch.ops.mta_ext
_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _check(hidden: torch.Tensor, attention_mask: torch.Tensor, key_block: int) -> None:
    # Metadata checks only (shape/dtype/device), so they also run under torch.compile's fake
    # tensors; the kernels repeat them.
    if not isinstance(hidden, torch.Tensor) or hidden.dtype not in _FLOATS:
        raise TypeError(
            f"token_salience: hidden must be a float32/float64/float16/bfloat16 tensor, got "
            f"{getattr(hidden, 'dtype', type(hidden))}"
        )
    if hidden.dim() != 3:
        raise ValueError(
            f"token_salience: hidden must be [B, T, D], got shape {tuple(hidden.shape)}"
        )
    if (
        not isinstance(attention_mask, torch.Tensor)
        or attention_mask.is_floating_point()
        or (attention_mask.is_complex())
    ):
        raise TypeError(
            "token_salience: attention_mask must be a bool or integer tensor, got "
            f"{getattr(attention_mask, 'dtype', type(attention_mask))}"
        )
    if tuple(attention_mask.shape) != tuple(hidden.shape[:2]):
        raise ValueError(
            f"token_salience: attention_mask must have shape [B, T] = {tuple(hidden.shape[:2])}, "
            f"got {tuple(attention_mask.shape)}"
        )
    if attention_mask.device != hidden.device:
        raise ValueError(
            f"token_salience: attention_mask is on {attention_mask.device} but hidden is on "
            f"{hidden.device}; move them to the same device"
        )
    if key_block < 0:
        raise ValueError(f"token_salience: key_block must be >= 0, got {key_block}")


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
        TypeError: wrong dtypes. ValueError: wrong ranks/shapes, different devices.
    """
    _check(hidden, attention_mask, key_block)
    return _ops.token_salience(hidden.detach(), attention_mask, key_block)


@torch.library.register_fake("mta_ext::token_salience")
def _token_salience_fake(hidden, attention_mask, key_block=0):
    _check(hidden, attention_mask, key_block)
    return hidden.new_empty(hidden.shape[:2], dtype=torch.float32)
