// segment_pool: the CPU kernels (cpu/segment_pool_cpu.cpp), registered by ops/segment_pool.cpp.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace mta_ext {

at::Tensor segment_pool_cpu(const at::Tensor& hidden, const at::Tensor& ranges,
                            const std::optional<at::Tensor>& weights,
                            std::optional<int64_t> num_incidences);
at::Tensor segment_pool_backward_cpu(const at::Tensor& grad_out, const at::Tensor& ranges,
                                     const std::optional<at::Tensor>& weights, int64_t num_rows,
                                     std::optional<int64_t> num_incidences);

}  // namespace mta_ext
