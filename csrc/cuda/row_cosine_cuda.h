// row_cosine: the CUDA kernels (cuda/row_cosine_cuda.cu), registered by ops/row_cosine.cpp.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <optional>
#include <tuple>

namespace mta_ext {

std::tuple<at::Tensor, at::Tensor, at::Tensor> row_cosine_cuda(
    const at::Tensor& p, const at::Tensor& h, const std::optional<at::Tensor>& rows, double eps);
std::tuple<at::Tensor, at::Tensor> row_cosine_backward_cuda(
    const at::Tensor& grad_cos, const at::Tensor& p, const at::Tensor& h,
    const std::optional<at::Tensor>& rows, const at::Tensor& norm_p, const at::Tensor& norm_h,
    const at::Tensor& cos, double eps, std::array<bool, 2> output_mask);

}  // namespace mta_ext
