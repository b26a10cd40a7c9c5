// row_cosine: schema, argument checks and dispatch (the kernels: cpu/row_cosine_cpu.cpp,
// cuda/row_cosine_cuda.cu).
//
// Forward: (cos, norm_p, norm_h) per row of p, in one read of p and of h's rows (the token-level
// Hid's cosine took a norm of each input, a product tensor and its row sums: four reads and a
// full-size temporary). Backward: grad_p = a h_r - β_p p (and grad_h_rows = a p - β_h h_r) in
// one pass, a = g / (max(‖p‖,ε) max(‖h‖,ε)), β_p = g cos / (max(‖p‖,ε) ‖p‖) where ‖p‖ > ε, else 0
// (the clamp makes the norm constant there). rows lets the caller project only some token rows
// and compare them with h's rows in place, without gathering h.
#include "ops/row_cosine.h"

#include "common/checks.h"
#include "common/cpu_kernel.h"
#include "common/debug.h"
#include "cpu/row_cosine_cpu.h"
#if defined(MTA_WITH_CUDA) || defined(MTA_WITH_SIMT)
#include "cuda/row_cosine_cuda.h"
#endif

#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>

namespace mta_ext {

RowCosineArgs prepare_row_cosine(const char* op, const at::Tensor& p, const at::Tensor& h,
                                 const std::optional<at::Tensor>& rows, double eps) {
  check_float(op, "p", p);
  check_dim(op, "p", p, 2, "[n, D]");
  check_dim(op, "h", h, 2, "[M, D]");
  TORCH_CHECK_TYPE(h.scalar_type() == p.scalar_type(), op, ": h must have the dtype of p (",
                   p.scalar_type(), "), got ", h.scalar_type());
  TORCH_CHECK_VALUE(h.size(1) == p.size(1), op, ": h must have the width of p (D = ", p.size(1),
                    "), got shape ", h.sizes());
  check_same_device(op, "h", h, "p", p);
  TORCH_CHECK_VALUE(std::isfinite(eps) && eps >= 0, op, ": eps must be finite and >= 0, got ", eps);
  RowCosineArgs out;
  out.p = p.contiguous();
  out.h = h.contiguous();
  if (rows.has_value()) {
    const auto& r = *rows;
    check_index(op, "rows", r);
    check_dim(op, "rows", r, 1, "[n]");
    TORCH_CHECK_VALUE(r.size(0) == p.size(0), op, ": rows must have one entry per row of p (",
                      p.size(0), "), got ", r.size(0));
    check_same_device(op, "rows", r, "p", p);
    out.rows = r.to(at::kLong).contiguous();
    if (value_checks_enabled(out.rows))
      check_index_values(op, "rows", out.rows, h.size(0), "h.size(0)");
  } else {
    TORCH_CHECK_VALUE(h.size(0) == p.size(0), op,
                      ": without rows, h must have one row per row of p (", p.size(0), "), got ",
                      h.size(0));
  }
  return out;
}

namespace {

at::Tensor prepare_row_stat(const char* op, const char* name, const at::Tensor& t, int64_t n,
                            const at::Tensor& p) {
  check_float(op, name, t);
  check_dim(op, name, t, 1, "[n]");
  TORCH_CHECK_VALUE(t.size(0) == n, op, ": ", name, " must have one entry per row of p (", n,
                    "), got ", t.size(0));
  check_same_device(op, name, t, "p", p);
  return t.to(row_cosine_acc(p.scalar_type())).contiguous();
}

}  // namespace

RowCosineBackwardArgs prepare_row_cosine_backward(const char* op, const at::Tensor& grad_cos,
                                                  const at::Tensor& p, const at::Tensor& h,
                                                  const std::optional<at::Tensor>& rows,
                                                  const at::Tensor& norm_p,
                                                  const at::Tensor& norm_h, const at::Tensor& cos,
                                                  double eps) {
  RowCosineBackwardArgs out;
  out.x = prepare_row_cosine(op, p, h, rows, eps);
  const int64_t n = out.x.p.size(0);
  out.grad_cos = prepare_row_stat(op, "grad_cos", grad_cos, n, out.x.p);
  out.norm_p = prepare_row_stat(op, "norm_p", norm_p, n, out.x.p);
  out.norm_h = prepare_row_stat(op, "norm_h", norm_h, n, out.x.p);
  out.cos = prepare_row_stat(op, "cos", cos, n, out.x.p);
  return out;
}

TORCH_LIBRARY_FRAGMENT(mta_ext, m) {
  // Returns (cos, norm_p, norm_h), each [n] in the accumulation type; the norms are what the
  // backward needs (and are unclamped).
  m.def(
      "row_cosine(Tensor p, Tensor h, Tensor? rows=None, float eps=1e-5) -> "
      "(Tensor, Tensor, Tensor)");
  // output_mask: which of (grad_p [n, D], grad_h_rows [n, D]) to compute; an unrequested one is
  // returned as an empty [0, D] tensor.
  m.def(
      "row_cosine_backward(Tensor grad_cos, Tensor p, Tensor h, Tensor? rows, Tensor norm_p, "
      "Tensor norm_h, Tensor cos, float eps, bool[2] output_mask) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(mta_ext, CPU, m) {
  m.impl("row_cosine", MTA_CPU_KERNEL(row_cosine_cpu, row_cosine_cuda));
  m.impl("row_cosine_backward", MTA_CPU_KERNEL(row_cosine_backward_cpu, row_cosine_backward_cuda));
}

#ifdef MTA_WITH_CUDA
TORCH_LIBRARY_IMPL(mta_ext, CUDA, m) {
  m.impl("row_cosine", &row_cosine_cuda);
  m.impl("row_cosine_backward", &row_cosine_backward_cuda);
}
#endif

}  // namespace mta_ext
