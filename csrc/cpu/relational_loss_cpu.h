// relational_loss: the CPU kernels (cpu/relational_loss_cpu.cpp), registered by
// ops/relational_loss.cpp.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/OptionalArrayRef.h>

#include <tuple>

namespace mta_ext {

at::Tensor relational_loss_cpu(const at::Tensor& u_student, const at::Tensor& u_teacher,
                               const at::Tensor& unit_weights, const at::Tensor& cu_units,
                               at::OptionalIntArrayRef plan_sizes);

std::tuple<at::Tensor, at::Tensor, at::Tensor> relational_loss_and_grad_cpu(
    const at::Tensor& u_student, const at::Tensor& u_teacher, const at::Tensor& unit_weights,
    const at::Tensor& cu_units, bool need_student, bool need_teacher,
    at::OptionalIntArrayRef plan_sizes);

std::tuple<at::Tensor, at::Tensor> relational_loss_backward_cpu(
    const at::Tensor& grad, const at::Tensor& u_student, const at::Tensor& u_teacher,
    const at::Tensor& unit_weights, const at::Tensor& cu_units, bool need_student,
    bool need_teacher, at::OptionalIntArrayRef plan_sizes);

}  // namespace mta_ext
