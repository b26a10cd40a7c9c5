"""Weighted segment pooling: ``torch.ops.mta_ext.segment_pool`` and its autograd."""

from __future__ import annotations

import torch

from .. import _loader  # noqa: F401  (loads the compiled ops)
from ._fake_rules import check_devices

__all__ = ["segment_pool"]

_ops = torch.ops.mta_ext


def segment_pool(
    hidden: torch.Tensor,
    ranges: torch.Tensor,
    weights: torch.Tensor | None = None,
    *,
    num_incidences: int | None = None,
) -> torch.Tensor:
    """Pool contiguous row ranges of ``hidden`` with per-row weights.

    ``out[k] = sum_{t in [s_k, e_k)} w_t * hidden[t] / max(sum_{t in [s_k, e_k)} w_t, 1e-5)``

    Args:
        hidden: ``[M, D]`` float32/float64/float16/bfloat16 (tokens flattened, e.g. ``[B*T, D]``).
            Any strides (made contiguous internally).
        ranges: ``[N, 2]`` int64 or int32 on the device of ``hidden``; unit ``k`` covers rows
            ``ranges[k, 0] <= t < ranges[k, 1]``. Ranges may overlap and may be empty
            (an empty range gives a zero row).
        weights: ``[M]`` float, finite and ``>= 0``, or ``None`` for a plain mean. Treated as
            constants: no gradient flows into them (MTA's salience weights are detached).
        num_incidences: host metadata, ``sum_k max(e_k - s_k, 0)`` (a ``UnitLayout`` keeps it
            per side: ``layout.host.teacher_incidences``). It sizes the CUDA backward's buffers
            without a host sync; ``None`` computes it from ``ranges`` in the backward (one host
            sync on CUDA). Checked against ``ranges`` on CPU and in the debug mode.

    Returns:
        ``[N, D]`` in the dtype of ``hidden``; accumulation is in float32 (float64 for float64
        inputs). Differentiable w.r.t. ``hidden`` (deterministic backward, no atomics), also
        twice (the backward is linear).

    Raises:
        TypeError: wrong dtypes. ValueError: wrong ranks/shapes, ranges outside ``[0, M]`` or
        with start > end, ``weights`` of the wrong length, negative or non-finite weights,
        tensors on different devices. The value checks (ranges, weights) run on CPU tensors,
        and on CUDA only in the debug mode (:func:`mta_ext.set_debug`).
    """
    return _ops.segment_pool(hidden, ranges, weights, num_incidences)


@torch.library.register_fake("mta_ext::segment_pool")
def _segment_pool_fake(hidden, ranges, weights=None, num_incidences=None):
    check_devices("segment_pool", "hidden", hidden, ranges=ranges, weights=weights)
    torch._check(hidden.dim() == 2, lambda: "segment_pool: hidden must be [M, D]")
    torch._check(ranges.dim() == 2 and ranges.shape[1] == 2, lambda: "ranges must be [N, 2]")
    return hidden.new_empty((ranges.shape[0], hidden.shape[1]))


@torch.library.register_fake("mta_ext::segment_pool_backward")
def _segment_pool_backward_fake(grad_out, ranges, weights, num_rows, num_incidences=None):
    check_devices("segment_pool_backward", "grad_out", grad_out, ranges=ranges, weights=weights)
    return grad_out.new_empty((num_rows, grad_out.shape[1]))


def _setup_context(ctx, inputs, output) -> None:
    hidden, ranges, weights, num_incidences = inputs
    ctx.num_rows = hidden.shape[0]
    ctx.num_incidences = num_incidences
    ctx.save_for_backward(ranges, weights)


def _backward(ctx, grad_out):
    ranges, weights = ctx.saved_tensors
    grad_hidden = None
    if ctx.needs_input_grad[0]:
        grad_hidden = _ops.segment_pool_backward(
            grad_out, ranges, weights, ctx.num_rows, ctx.num_incidences
        )
    return grad_hidden, None, None, None


torch.library.register_autograd("mta_ext::segment_pool", _backward, setup_context=_setup_context)


# The backward is the adjoint of the forward (both are the same sparse linear map, transposed),
# so its own gradient w.r.t. grad_out is a forward pooling: this makes double backward work.
def _setup_context_bwd(ctx, inputs, output) -> None:
    _grad_out, ranges, weights, _num_rows, num_incidences = inputs
    ctx.num_incidences = num_incidences
    ctx.save_for_backward(ranges, weights)


def _backward_bwd(ctx, grad_grad_hidden):
    ranges, weights = ctx.saved_tensors
    grad = _ops.segment_pool(grad_grad_hidden, ranges, weights, ctx.num_incidences)
    return grad, None, None, None, None


torch.library.register_autograd(
    "mta_ext::segment_pool_backward", _backward_bwd, setup_context=_setup_context_bwd
)
