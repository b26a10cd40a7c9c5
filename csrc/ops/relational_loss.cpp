// relational_loss (DSA): schema, argument checks and dispatch. The kernels:
// cpu/relational_loss_cpu.cpp and cuda/relational_loss_cuda.cu (+ its .cuh device tiles); the
// CUDA tile plan in relational_loss_plan.{h,cpp}.
//
// loss = sum_b sum_{i!=j in b} W_i W_j (cS_ij - cT_ij)^2 / max(sum_b sum_{i!=j in b} W_i W_j, 1e-5)
// (docs/DESIGN.md §2.4). Metadata is checked on every call; cu_units and the weights' values
// only where value_checks_enabled() (common/debug.h).
#include "ops/relational_loss.h"

#include "common/checks.h"
#include "common/cpu_kernel.h"
#include "common/debug.h"
#include "cpu/relational_loss_cpu.h"
#if defined(MTA_WITH_CUDA) || defined(MTA_WITH_SIMT)
#include "cuda/relational_loss_cuda.h"
#endif

#include <ATen/ATen.h>
#include <torch/library.h>

namespace mta_ext {

at::Tensor check_relational_loss_args(const char* op, const at::Tensor& u_student,
                                      const at::Tensor& u_teacher, const at::Tensor& unit_weights,
                                      const at::Tensor& cu_units) {
  check_float(op, "u_student", u_student);
  check_float(op, "u_teacher", u_teacher);
  check_float(op, "unit_weights", unit_weights);
  check_index(op, "cu_units", cu_units);
  check_dim(op, "u_student", u_student, 2, "[N, Ds]");
  check_dim(op, "u_teacher", u_teacher, 2, "[N, Dt]");
  check_dim(op, "unit_weights", unit_weights, 1, "[N]");
  check_dim(op, "cu_units", cu_units, 1, "[B + 1]");
  const int64_t N = u_student.size(0);
  TORCH_CHECK_VALUE(u_teacher.size(0) == N, op, ": u_teacher has ", u_teacher.size(0),
                    " units but u_student has ", N, " (they must hold the same units)");
  TORCH_CHECK_VALUE(unit_weights.size(0) == N, op, ": unit_weights has ", unit_weights.size(0),
                    " entries but there are ", N, " units");
  TORCH_CHECK_VALUE(cu_units.size(0) >= 1, op, ": cu_units must have B + 1 >= 1 entries");
  check_same_device(op, "u_teacher", u_teacher, "u_student", u_student);
  check_same_device(op, "unit_weights", unit_weights, "u_student", u_student);
  check_same_device(op, "cu_units", cu_units, "u_student", u_student);
  auto cu = cu_units.to(at::kLong).contiguous();
  if (!value_checks_enabled(cu)) return cu;  // a device tensor outside the debug mode
  // Value checks (CPU tensors, or the debug mode); report the first offending example.
  note_value_check();
  const int64_t B = cu.size(0) - 1;
  auto c = cu.cpu();  // host sync: debug mode
  const int64_t* cp = c.const_data_ptr<int64_t>();
  TORCH_CHECK_VALUE(cp[0] == 0, op, ": cu_units[0] must be 0, got ", cp[0]);
  for (int64_t b = 0; b < B; ++b)
    TORCH_CHECK_VALUE(cp[b + 1] >= cp[b], op, ": cu_units must be non-decreasing, but example ", b,
                      " has cu_units[", b, "] = ", cp[b], " > cu_units[", b + 1, "] = ", cp[b + 1]);
  TORCH_CHECK_VALUE(cp[B] == N, op, ": cu_units[-1] = ", cp[B],
                    " must equal the number of units N = ", N);
  check_nonnegative(op, "unit_weights", unit_weights);  // one more value check
  return cu;
}

plan::Sizes resolve_plan_sizes(const char* op, const at::Tensor& cu, int64_t N,
                               at::OptionalIntArrayRef plan_sizes) {
  const int64_t B = cu.size(0) - 1;
  if (plan_sizes.has_value()) {
    const auto v = *plan_sizes;
    const plan::Sizes s = plan::sizes_from_list(op, v);
    if (value_checks_enabled(cu)) {
      const auto c = cu.cpu();  // host sync: debug mode
      const plan::Sizes t = plan::plan_sizes(c.const_data_ptr<int64_t>(), B, N);
      TORCH_CHECK_VALUE(t.tiles == s.tiles && t.rows == s.rows && t.e == s.e && t.rad == s.rad, op,
                        ": plan_sizes = ", v, " do not match cu_units (expected [", t.tiles, ", ",
                        t.rows, ", ", t.e, ", ", t.rad, "]); pass the layout's own plan_sizes");
    }
    return s;
  }
  if (!host_readable(cu)) note_host_metadata_fallback();
  const auto c = cu.cpu();  // host sync: raw-op fallback
  return plan::plan_sizes(c.const_data_ptr<int64_t>(), B, N);
}

TORCH_LIBRARY_FRAGMENT(mta_ext, m) {
  // plan_sizes: [num_tiles, num_row_tiles, gram_size, radial_size] of cu_units, host metadata
  // that UnitLayout keeps (mta_ext/_layout.py); the CUDA kernels size their buffers and launches
  // from it without a host sync. None: computed from cu_units (a host sync on CUDA).
  m.def(
      "relational_loss(Tensor u_student, Tensor u_teacher, Tensor unit_weights, Tensor cu_units, "
      "int[]? plan_sizes=None) -> Tensor");
  // Forward that also returns the gradients for an upstream gradient of 1 (rows [0, D] when not
  // requested) in the accumulation dtype (fp32, fp64 when any input is fp64): fwd+bwd in one
  // pass, nothing but the gradients kept for the backward.
  m.def(
      "relational_loss_and_grad(Tensor u_student, Tensor u_teacher, Tensor unit_weights, "
      "Tensor cu_units, bool need_student, bool need_teacher, int[]? plan_sizes=None) "
      "-> (Tensor, Tensor, Tensor)");
  m.def(
      "relational_loss_backward(Tensor grad, Tensor u_student, Tensor u_teacher, "
      "Tensor unit_weights, Tensor cu_units, bool need_student=True, bool need_teacher=True, "
      "int[]? plan_sizes=None) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(mta_ext, CPU, m) {
  m.impl("relational_loss", MTA_CPU_KERNEL(relational_loss_cpu, relational_loss_cuda));
  m.impl("relational_loss_and_grad",
         MTA_CPU_KERNEL(relational_loss_and_grad_cpu, relational_loss_and_grad_cuda));
  m.impl("relational_loss_backward",
         MTA_CPU_KERNEL(relational_loss_backward_cpu, relational_loss_backward_cuda));
}

#ifdef MTA_WITH_CUDA
TORCH_LIBRARY_IMPL(mta_ext, CUDA, m) {
  m.impl("relational_loss", &relational_loss_cuda);
  m.impl("relational_loss_and_grad", &relational_loss_and_grad_cuda);
  m.impl("relational_loss_backward", &relational_loss_backward_cuda);
}
#endif

}  // namespace mta_ext
