"""Relational (DSA) loss over ragged unit batches: ``torch.ops.mta_ext.relational_loss``."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .. import _loader  # noqa: F401  (loads the compiled ops)
from ._fake_rules import acc_dtype, check_devices

__all__ = ["relational_loss"]

_ops = torch.ops.mta_ext
_OP = "relational_loss"


def _fake_rules(u_student, u_teacher, unit_weights, cu_units) -> None:
    # The fake kernels' few shape rules. The argument checks and their messages live in C++
    # (check_relational_loss_args, csrc/ops/relational_loss.cpp) and run on every real call;
    # the device rule is repeated here so that a call mixing a meta tensor with real ones (it
    # dispatches to the fake kernel) fails the same way.
    check_devices(
        _OP,
        "u_student",
        u_student,
        u_teacher=u_teacher,
        unit_weights=unit_weights,
        cu_units=cu_units,
    )
    torch._check(u_student.dim() == 2, lambda: f"{_OP}: u_student must have shape [N, Ds]")
    torch._check(u_teacher.dim() == 2, lambda: f"{_OP}: u_teacher must have shape [N, Dt]")


def relational_loss(
    u_student: torch.Tensor,
    u_teacher: torch.Tensor,
    unit_weights: torch.Tensor,
    cu_units: torch.Tensor,
    *,
    plan_sizes: Sequence[int] | None = None,
) -> torch.Tensor:
    """Weighted MSE between the cosine Gram matrices of each example's units (DSA).

    ``Σ_b Σ_{i≠j∈b} W_i W_j (c^S_ij − c^T_ij)² / max(Σ_b Σ_{i≠j∈b} W_i W_j, 1e-5)``,
    ``c_ij = u_i·u_j / (max(‖u_i‖, 1e-12) max(‖u_j‖, 1e-12))``; pairs never cross examples.

    Args:
        u_student: ``[N, Ds]`` float (any of fp32/fp64/fp16/bf16).
        u_teacher: ``[N, Dt]`` float; ``Dt`` may differ from ``Ds``.
        unit_weights: ``[N]`` float, finite, ``>= 0``. Treated as constants (no gradient).
        cu_units: ``[B + 1]`` int64/int32, ``cu[0] = 0``, non-decreasing, ``cu[B] = N``.
            Example ``b`` owns units ``cu[b] <= k < cu[b+1]``.
        plan_sizes: host metadata of ``cu_units`` (4 ints, see
            :func:`mta_ext._layout.relational_plan_sizes`; a ``UnitLayout`` keeps them:
            ``layout.host.plan_sizes``). The CUDA kernels size their buffers and launches from
            them without a host sync; ``None`` computes them from ``cu_units`` (one host sync on
            CUDA). Checked against ``cu_units`` on CPU and in the debug mode.

    Returns:
        0-dim tensor, float32 (float64 if any float input is float64); accumulation in that
        type. Differentiable w.r.t. both unit tensors (deterministic backward that recomputes
        the per-example Gram difference: no ``N×N`` autograd graph). An empty batch or one
        without any pair gives exactly 0 with zero gradients.

    Raises:
        TypeError: wrong dtypes. ValueError: wrong shapes, different devices, bad ``cu_units``
        (naming the offending example), negative or non-finite weights (value checks: CPU
        tensors, and CUDA in the debug mode, :func:`mta_ext.set_debug`).
    """
    ps = None if plan_sizes is None else [int(x) for x in plan_sizes]
    grad_on = torch.is_grad_enabled()
    # getattr: a non-tensor argument reaches the op, whose schema rejects it (TypeError).
    need_s = grad_on and getattr(u_student, "requires_grad", False)
    need_t = grad_on and getattr(u_teacher, "requires_grad", False)
    if need_s or need_t:
        # Fused: the forward also computes the gradients (the N_b x N_b Gram difference is at
        # hand), the backward only scales them by the upstream gradient.
        return _ops.relational_loss_and_grad(
            u_student, u_teacher, unit_weights, cu_units, need_s, need_t, ps
        )[0]
    return _ops.relational_loss(u_student, u_teacher, unit_weights, cu_units, ps)


@torch.library.register_fake("mta_ext::relational_loss")
def _relational_loss_fake(u_student, u_teacher, unit_weights, cu_units, plan_sizes=None):
    _fake_rules(u_student, u_teacher, unit_weights, cu_units)
    return u_student.new_empty((), dtype=acc_dtype(u_student, u_teacher, unit_weights))


@torch.library.register_fake("mta_ext::relational_loss_and_grad")
def _relational_loss_and_grad_fake(
    u_student, u_teacher, unit_weights, cu_units, need_student, need_teacher, plan_sizes=None
):
    _fake_rules(u_student, u_teacher, unit_weights, cu_units)
    n = u_student.shape[0]
    acc = acc_dtype(u_student, u_teacher, unit_weights)
    # The precomputed gradients (upstream gradient 1) are kept in the accumulation dtype.
    return (
        u_student.new_empty((), dtype=acc),
        u_student.new_empty((n if need_student else 0, u_student.shape[1]), dtype=acc),
        u_teacher.new_empty((n if need_teacher else 0, u_teacher.shape[1]), dtype=acc),
    )


@torch.library.register_fake("mta_ext::relational_loss_backward")
def _relational_loss_backward_fake(
    grad,
    u_student,
    u_teacher,
    unit_weights,
    cu_units,
    need_student=True,
    need_teacher=True,
    plan_sizes=None,
):
    return u_student.new_empty(u_student.shape), u_teacher.new_empty(u_teacher.shape)


def _setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs[:4])
    ctx.plan_sizes = inputs[4]


def _backward(ctx, grad):
    u_student, u_teacher, unit_weights, cu_units = ctx.saved_tensors
    need_s, need_t = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    if not (need_s or need_t):
        return None, None, None, None, None
    gs, gt = _ops.relational_loss_backward(
        grad, u_student, u_teacher, unit_weights, cu_units, need_s, need_t, ctx.plan_sizes
    )
    return (gs if need_s else None), (gt if need_t else None), None, None, None


torch.library.register_autograd("mta_ext::relational_loss", _backward, setup_context=_setup_context)


def _setup_context_fused(ctx, inputs, output) -> None:
    _loss, grad_s, grad_t = output
    ctx.mark_non_differentiable(grad_s, grad_t)
    ctx.save_for_backward(*inputs[:4], grad_s, grad_t)
    ctx.has_s, ctx.has_t = inputs[4], inputs[5]
    ctx.plan_sizes = inputs[6]
    ctx.dtype_s, ctx.dtype_t = inputs[0].dtype, inputs[1].dtype


def _backward_fused(ctx, grad, _grad_gs, _grad_gt):
    u_student, u_teacher, unit_weights, cu_units, grad_s, grad_t = ctx.saved_tensors
    want_s, want_t = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    # grad_s / grad_t are in the accumulation dtype: scale there, round to the input dtype once
    # (an fp16 gradient for g = 1 could overflow, or underflow before a loss scale of 2^16).
    gs = (grad_s * grad.to(grad_s.dtype)).to(ctx.dtype_s) if want_s and ctx.has_s else None
    gt = (grad_t * grad.to(grad_t.dtype)).to(ctx.dtype_t) if want_t and ctx.has_t else None
    miss_s, miss_t = want_s and not ctx.has_s, want_t and not ctx.has_t
    if miss_s or miss_t:  # not precomputed (called with need_*=False): recompute those
        rs, rt = _ops.relational_loss_backward(
            grad, u_student, u_teacher, unit_weights, cu_units, miss_s, miss_t, ctx.plan_sizes
        )
        gs = rs if miss_s else gs
        gt = rt if miss_t else gt
    return gs, gt, None, None, None, None, None


torch.library.register_autograd(
    "mta_ext::relational_loss_and_grad", _backward_fused, setup_context=_setup_context_fused
)
