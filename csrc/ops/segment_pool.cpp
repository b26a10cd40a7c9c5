// segment_pool: schema, argument checks and dispatch (the kernels: cpu/segment_pool_cpu.cpp,
// cuda/segment_pool_cuda.cu).
//
// out[k] = sum_{t in [s_k,e_k)} w_t h_t / max(sum w_t, 1e-5). Metadata is checked on every call;
// the values of ranges and weights only where value_checks_enabled() (common/debug.h).
#include "ops/segment_pool.h"

#include "common/checks.h"
#include "common/cpu_kernel.h"
#include "common/debug.h"
#include "cpu/segment_pool_cpu.h"
#if defined(MTA_WITH_CUDA) || defined(MTA_WITH_SIMT)
#include "cuda/segment_pool_cuda.h"
#endif

#include <ATen/ATen.h>
#include <torch/library.h>

namespace mta_ext {

SegmentPoolArgs prepare_segment_pool(const char* op, const at::Tensor& hidden_or_grad,
                                     const at::Tensor& ranges,
                                     const std::optional<at::Tensor>& weights, int64_t num_rows,
                                     const char* rows_name) {
  check_index(op, "ranges", ranges);
  check_dim(op, "ranges", ranges, 2, "[N, 2]");
  TORCH_CHECK_VALUE(ranges.size(1) == 2, op, ": ranges must have shape [N, 2], got ",
                    ranges.sizes());
  check_same_device(op, "ranges", ranges, "hidden", hidden_or_grad);
  SegmentPoolArgs out;
  out.hidden = hidden_or_grad.contiguous();
  out.ranges = ranges.to(at::kLong).contiguous();
  if (value_checks_enabled(out.ranges))
    check_ranges_values(op, "ranges", out.ranges, num_rows, rows_name);
  if (weights.has_value()) {
    const auto& w = *weights;
    check_float(op, "weights", w);
    check_dim(op, "weights", w, 1, "[M]");
    TORCH_CHECK_VALUE(w.size(0) == num_rows, op,
                      ": weights must have one entry per row of hidden (", num_rows, "), got ",
                      w.size(0));
    check_same_device(op, "weights", w, "hidden", hidden_or_grad);
    if (value_checks_enabled(w)) check_nonnegative(op, "weights", w);
    const auto acc = hidden_or_grad.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    out.weights = w.detach().to(acc).contiguous();
  }
  return out;
}

int64_t num_incidences_of(const char* op, const at::Tensor& ranges,
                          std::optional<int64_t> num_incidences) {
  if (num_incidences.has_value()) {
    TORCH_CHECK_VALUE(*num_incidences >= 0, op, ": num_incidences must be >= 0, got ",
                      *num_incidences);
    if (value_checks_enabled(ranges)) {
      const int64_t p = (ranges.select(1, 1) - ranges.select(1, 0))
                            .clamp_min(0)
                            .sum()
                            .item<int64_t>();  // host sync: debug mode
      TORCH_CHECK_VALUE(p == *num_incidences, op, ": num_incidences = ", *num_incidences,
                        " but the ranges cover ", p, " (token, unit) pairs");
    }
    return *num_incidences;
  }
  if (!host_readable(ranges)) note_host_metadata_fallback();
  return (ranges.select(1, 1) - ranges.select(1, 0))
      .clamp_min(0)
      .sum()
      .item<int64_t>();  // host sync: raw-op fallback
}

TORCH_LIBRARY_FRAGMENT(mta_ext, m) {
  // num_incidences: sum_k (e_k - s_k), the (token, unit) pairs; host metadata from the layout
  // (UnitLayout keeps it) that sizes the CUDA backward's buffers without a host sync. None:
  // computed from ranges (a host sync on CUDA).
  m.def(
      "segment_pool(Tensor hidden, Tensor ranges, Tensor? weights=None, "
      "int? num_incidences=None) -> Tensor");
  m.def(
      "segment_pool_backward(Tensor grad_out, Tensor ranges, Tensor? weights, SymInt num_rows, "
      "int? num_incidences=None) -> Tensor");
}

TORCH_LIBRARY_IMPL(mta_ext, CPU, m) {
  m.impl("segment_pool", MTA_CPU_KERNEL(segment_pool_cpu, segment_pool_cuda));
  m.impl("segment_pool_backward",
         MTA_CPU_KERNEL(segment_pool_backward_cpu, segment_pool_backward_cuda));
}

#ifdef MTA_WITH_CUDA
TORCH_LIBRARY_IMPL(mta_ext, CUDA, m) {
  m.impl("segment_pool", &segment_pool_cuda);
  m.impl("segment_pool_backward", &segment_pool_backward_cuda);
}
#endif

}  // namespace mta_ext
