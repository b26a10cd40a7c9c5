// relational_loss: the CUDA kernels (cuda/relational_loss_cuda.cu), registered by
// ops/relational_loss.cpp.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/OptionalArrayRef.h>

#include <tuple>

namespace mta_ext {

at::Tensor relational_loss_cuda(const at::Tensor& u_student, const at::Tensor& u_teacher,
                                const at::Tensor& unit_weights, const at::Tensor& cu_units,
                                at::OptionalIntArrayRef plan_sizes);

std::tuple<at::Tensor, at::Tensor, at::Tensor> relational_loss_and_grad_cuda(
    const at::Tensor& u_student, const at::Tensor& u_teacher, const at::Tensor& unit_weights,
    const at::Tensor& cu_units, bool need_student, bool need_teacher,
    at::OptionalIntArrayRef plan_sizes);

std::tuple<at::Tensor, at::Tensor> relational_loss_backward_cuda(
    const at::Tensor& grad, const at::Tensor& u_student, const at::Tensor& u_teacher,
    const at::Tensor& unit_weights, const at::Tensor& cu_units, bool need_student,
    bool need_teacher, at::OptionalIntArrayRef plan_sizes);

// Test-only: the plan make_plan builds on the device for the host's sizes (tiles, rows, the
// wrong-metadata flag); ops/relational_loss_plan.cpp registers it.
std::tuple<at::Tensor, at::Tensor, at::Tensor> relational_loss_plan_with_sizes_cuda(
    const at::Tensor& cu_units, int64_t num_units, at::IntArrayRef plan_sizes);

}  // namespace mta_ext
