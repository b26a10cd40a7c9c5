"""Row cosine: ``torch.ops.mta_ext.row_cosine`` and its autograd."""

from __future__ import annotations

import torch

from .. import _loader  # noqa: F401  (loads the compiled ops)
from ._fake_rules import acc_dtype, check_devices

__all__ = ["row_cosine"]

_ops = torch.ops.mta_ext


def row_cosine(
    p: torch.Tensor,
    h: torch.Tensor,
    rows: torch.Tensor | None = None,
    *,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Cosine of each row of ``p`` with a row of ``h``, as ``F.cosine_similarity(dim=-1)``:

    ``cos_i = p_i · h_{r_i} / (max(‖p_i‖, eps) · max(‖h_{r_i}‖, eps))``, ``r_i = rows[i]``
    (or ``i`` without ``rows``). Fused: one read of ``p`` and of ``h``'s rows, no temporaries;
    the backward writes each gradient row in one pass. With ``rows``, ``h`` is read in place
    (the token-level Hid compares only the projected rows with the teacher's, without copying
    them out of ``h``).

    Args:
        p: ``[n, D]`` float32/float64/float16/bfloat16.
        h: ``[M, D]`` of ``p``'s dtype, on ``p``'s device.
        rows: ``[n]`` int64 or int32 indices into ``h``'s rows (``0 <= rows[i] < M``; checked
            on CPU tensors and in the debug mode), or ``None`` (then ``M == n``).
        eps: the norm clamp, finite and ``>= 0``.

    Returns:
        ``[n]`` float32 (float64 for float64 inputs); the sums are accumulated in float64 on
        every device. Differentiable w.r.t. ``p`` and ``h`` (the derivative of the clamped
        forward: a norm below ``eps`` is a constant). Deterministic.

    Raises:
        TypeError: wrong dtypes. ValueError: wrong ranks/shapes, ``rows`` out of range,
        tensors on different devices, a bad ``eps``.
    """
    return _ops.row_cosine(p, h, rows, eps)[0]


@torch.library.register_fake("mta_ext::row_cosine")
def _row_cosine_fake(p, h, rows=None, eps=1e-5):
    check_devices("row_cosine", "p", p, h=h, rows=rows)
    torch._check(p.dim() == 2 and h.dim() == 2, lambda: "row_cosine: p, h must be [n, D], [M, D]")
    torch._check(h.shape[1] == p.shape[1], lambda: "row_cosine: h must have the width of p")
    n = p.shape[0]
    return tuple(p.new_empty((n,), dtype=acc_dtype(p)) for _ in range(3))


@torch.library.register_fake("mta_ext::row_cosine_backward")
def _row_cosine_backward_fake(grad_cos, p, h, rows, norm_p, norm_h, cos, eps, output_mask):
    check_devices("row_cosine_backward", "p", p, h=h, rows=rows, grad_cos=grad_cos)
    n, d = p.shape
    return (
        p.new_empty((n if output_mask[0] else 0, d)),
        p.new_empty((n if output_mask[1] else 0, d)),
    )


def _scatter_rows(out: torch.Tensor, rows: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """``out[rows[i]] += src[i]`` in a fixed order: ``index_add_`` on the CPU (a serial loop;
    its ``index_put_(accumulate=True)`` races), ``index_put_(accumulate=True)`` elsewhere
    (sorted on CUDA; ``index_add_`` uses float atomics there)."""
    if out.device.type == "cpu":
        return out.index_add_(0, rows, src)
    return out.index_put_((rows,), src, accumulate=True)


def _setup_context(ctx, inputs, output) -> None:
    p, h, rows, eps = inputs
    cos, norm_p, norm_h = output
    ctx.mark_non_differentiable(norm_p, norm_h)
    ctx.eps = eps
    ctx.save_for_backward(p, h, rows, norm_p, norm_h, cos)


def _backward(ctx, grad_cos, _grad_norm_p, _grad_norm_h):
    p, h, rows, norm_p, norm_h, cos = ctx.saved_tensors
    need_p, need_h = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    if grad_cos is None or not (need_p or need_h):
        return None, None, None, None
    grad_p, grad_h_rows = _ops.row_cosine_backward(
        grad_cos, p, h, rows, norm_p, norm_h, cos, ctx.eps, [need_p, need_h]
    )
    grad_h = None
    if need_h:
        grad_h = grad_h_rows
        if rows is not None:  # rows may repeat: accumulate, deterministically on every device
            grad_h = _scatter_rows(h.new_zeros(h.shape), rows.long(), grad_h_rows)
    return (grad_p if need_p else None), grad_h, None, None


torch.library.register_autograd("mta_ext::row_cosine", _backward, setup_context=_setup_context)
