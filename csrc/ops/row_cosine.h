// Row cosine (docs/DESIGN.md §2.5): cos_i = p_i·h_{r_i} / (max(‖p_i‖, eps) max(‖h_{r_i}‖, eps)),
// the per-token cosine of the token-level Hid, with h's row r_i = rows[i] (or i). Shared between
// the CPU (.cpp) and CUDA (.cu) implementations: the argument checks.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace mta_ext {

struct RowCosineArgs {
  at::Tensor p;     // [n, D] contiguous
  at::Tensor h;     // [M, D] contiguous, p's dtype
  at::Tensor rows;  // [n] int64 contiguous, or undefined (row i of h for row i of p)
};

// Metadata checks always (p, h float [n, D] / [M, D] of one dtype and width on one device; rows
// int64/int32 [n] or None with M == n; eps finite and >= 0); the values of rows (0 <= rows[i] <
// M) where value_checks_enabled().
RowCosineArgs prepare_row_cosine(const char* op, const at::Tensor& p, const at::Tensor& h,
                                 const std::optional<at::Tensor>& rows, double eps);

// The backward's arguments: the forward's (checked as above) and its per-row inputs, each
// float [n] on p's device, returned contiguous in the accumulation type.
struct RowCosineBackwardArgs {
  RowCosineArgs x;
  at::Tensor grad_cos, norm_p, norm_h, cos;  // [n], accumulation type
};

RowCosineBackwardArgs prepare_row_cosine_backward(const char* op, const at::Tensor& grad_cos,
                                                  const at::Tensor& p, const at::Tensor& h,
                                                  const std::optional<at::Tensor>& rows,
                                                  const at::Tensor& norm_p,
                                                  const at::Tensor& norm_h, const at::Tensor& cos,
                                                  double eps);

// The accumulation type: float64 for float64 inputs, else float32.
inline at::ScalarType row_cosine_acc(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace mta_ext
