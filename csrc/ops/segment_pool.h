// Weighted segment pooling: out[k] = sum_{t in [s_k,e_k)} w_t h_t / max(sum w_t, 1e-5).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace mta_ext {

// Validates the arguments of segment_pool (device independent) and returns them normalised:
// hidden contiguous, ranges contiguous int64, weights contiguous in the accumulation type.
struct SegmentPoolArgs {
  at::Tensor hidden;
  at::Tensor ranges;
  std::optional<at::Tensor> weights;
};
SegmentPoolArgs prepare_segment_pool(const char* op, const at::Tensor& hidden_or_grad,
                                     const at::Tensor& ranges,
                                     const std::optional<at::Tensor>& weights, int64_t num_rows,
                                     const char* rows_name);

// sum_k max(e_k - s_k, 0): the given host value (checked against the ranges where value checks
// run), else computed from the ranges (a host sync for device tensors: the raw-op fallback).
int64_t num_incidences_of(const char* op, const at::Tensor& ranges,
                          std::optional<int64_t> num_incidences);

}  // namespace mta_ext
