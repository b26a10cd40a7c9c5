// Relational (DSA) loss over ragged unit batches (docs/DESIGN.md §2.4). Shared between the CPU
// (.cpp) and CUDA (.cu) implementations: argument checks and the exact constants of the maths.
#pragma once

#include "ops/relational_loss_plan.h"

#include <ATen/core/Tensor.h>
#include <c10/core/SymIntArrayRef.h>
#include <c10/util/OptionalArrayRef.h>

namespace mta_ext {

constexpr double kCosEps = 1e-12;       // cos(x,y) = x.y / (max(|x|,eps) max(|y|,eps)), F.normalize
constexpr double kWeightSumEps = 1e-5;  // loss = num / max(sum_{i!=j} W_i W_j, eps)

// Metadata checks (any device): u_student [N,Ds], u_teacher [N,Dt] float; unit_weights [N] float;
// cu_units [B+1] int32/int64; all on one device. Value checks where value_checks_enabled() (CPU
// tensors, or the debug mode): cu_units[0] == 0, non-decreasing, cu_units[B] == N, naming the
// first bad example; unit_weights finite and >= 0. Returns cu_units as contiguous int64.
at::Tensor check_relational_loss_args(const char* op, const at::Tensor& u_student,
                                      const at::Tensor& u_teacher, const at::Tensor& unit_weights,
                                      const at::Tensor& cu_units);

// The tile plan's sizes: the given host metadata (checked against cu_units where value checks
// run), else computed from cu_units (a host sync for a device tensor: the raw-op fallback).
// cu: the contiguous int64 cu_units; N: the number of units.
plan::Sizes resolve_plan_sizes(const char* op, const at::Tensor& cu, int64_t N,
                               at::OptionalIntArrayRef plan_sizes);

}  // namespace mta_ext
