// relational_loss (DSA): schema, argument checks and the CPU kernels (forward and backward).
//
// loss = sum_b sum_{i!=j in b} W_i W_j (cS_ij - cT_ij)^2 / max(sum_b sum_{i!=j in b} W_i W_j, 1e-5)
// with c the cosine Gram matrix of each example's units (DESIGN.md §2). Each example block is
// handled on its own (rows normalised, both Grams by BLAS, weighted squared difference reduced
// in place): memory is O(max_b N_b^2), never N x N, and the backward recomputes the N_b x N_b
// difference instead of keeping an autograd graph. Examples run in parallel; their partial sums
// are reduced in example order, so results are bit-identical across runs.
#include "ops/relational_loss.h"

#include "common/checks.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

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
  // Value checks with tensor ops (device independent); report the first offending example.
  const int64_t B = cu.size(0) - 1;
  auto c = cu.cpu();
  const int64_t* cp = c.const_data_ptr<int64_t>();
  TORCH_CHECK_VALUE(cp[0] == 0, op, ": cu_units[0] must be 0, got ", cp[0]);
  for (int64_t b = 0; b < B; ++b)
    TORCH_CHECK_VALUE(cp[b + 1] >= cp[b], op, ": cu_units must be non-decreasing, but example ",
                      b, " has cu_units[", b, "] = ", cp[b], " > cu_units[", b + 1,
                      "] = ", cp[b + 1]);
  TORCH_CHECK_VALUE(cp[B] == N, op, ": cu_units[-1] = ", cp[B],
                    " must equal the number of units N = ", N);
  check_nonnegative(op, "unit_weights", unit_weights);
  return cu;
}

namespace {

constexpr const char* kFwd = "relational_loss";
constexpr const char* kBwd = "relational_loss_backward";

at::ScalarType acc_dtype(const at::Tensor& a, const at::Tensor& b, const at::Tensor& w) {
  return (a.scalar_type() == at::kDouble || b.scalar_type() == at::kDouble ||
          w.scalar_type() == at::kDouble)
             ? at::kDouble
             : at::kFloat;
}

// Rows divided by max(|row|, eps) (F.normalize); also returns the clamped norms [n, 1].
std::pair<at::Tensor, at::Tensor> normalize_rows(const at::Tensor& x) {
  auto nrm = at::linalg_vector_norm(x, 2, {1}, /*keepdim=*/true).clamp_min_(kCosEps);
  return {x / nrm, nrm};
}

// sum_{i != j} W_i W_j for one example = sum_i W_i (sum W - W_i): every term is >= 0.
at::Tensor pair_weight_sum(const at::Tensor& w) { return (w * (w.sum() - w)).sum(); }

// Per-example sums of pair weights, reduced in example order in the accumulation type.
at::Tensor total_pair_weight(const at::Tensor& w_acc, const std::vector<int64_t>& cu) {
  auto den = at::zeros({}, w_acc.options());
  for (size_t b = 0; b + 1 < cu.size(); ++b)
    if (cu[b + 1] - cu[b] >= 2) den.add_(pair_weight_sum(w_acc.slice(0, cu[b], cu[b + 1])));
  return den;
}

std::vector<int64_t> to_vector(const at::Tensor& cu) {
  const int64_t* p = cu.const_data_ptr<int64_t>();
  return std::vector<int64_t>(p, p + cu.numel());
}

at::Tensor relational_loss_cpu(const at::Tensor& u_student, const at::Tensor& u_teacher,
                               const at::Tensor& unit_weights, const at::Tensor& cu_units) {
  const auto cu = to_vector(check_relational_loss_args(kFwd, u_student, u_teacher, unit_weights,
                                                       cu_units));
  const auto acc = acc_dtype(u_student, u_teacher, unit_weights);
  const int64_t B = static_cast<int64_t>(cu.size()) - 1;
  // Detached: the work below runs on OpenMP threads that do not inherit the dispatcher's
  // "below autograd" state, and must not record a graph.
  const auto us = u_student.detach(), ut = u_teacher.detach();
  const auto w = unit_weights.detach().to(acc).contiguous();
  std::vector<at::Tensor> num(B);
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t a = cu[b], e = cu[b + 1];
      if (e - a < 2) continue;  // no pair i != j
      auto ns = normalize_rows(us.slice(0, a, e).to(acc)).first;
      auto nt = normalize_rows(ut.slice(0, a, e).to(acc)).first;
      auto d = at::mm(ns, ns.t()).sub_(at::mm(nt, nt.t()));
      d.diagonal().zero_();
      d.mul_(d);
      const auto wb = w.slice(0, a, e);
      num[b] = at::dot(at::mv(d, wb), wb);
    }
  });
  auto total = at::zeros({}, w.options());
  for (int64_t b = 0; b < B; ++b)
    if (num[b].defined()) total.add_(num[b]);
  return total.div_(total_pair_weight(w, cu).clamp_min_(kWeightSumEps));
}

// Gradient of sum_b sum_{i!=j} W_i W_j (c_ij - c'_ij)^2 * scale w.r.t. the normalised rows n is
// 4 * scale * M n, M = W W^T o (c - c') with a zero diagonal; then back through x / max(|x|,eps).
at::Tensor normalize_backward(const at::Tensor& g_n, const at::Tensor& n, const at::Tensor& nrm) {
  auto radial = (g_n * n).sum(1, /*keepdim=*/true);
  // Where |x| > eps: (g - n (n.g)) / |x|; where the norm was clamped: g / eps.
  auto clamped = nrm.le(kCosEps);
  return at::where(clamped, g_n / nrm, (g_n - n * radial) / nrm);
}

std::tuple<at::Tensor, at::Tensor> relational_loss_backward_cpu(
    const at::Tensor& grad, const at::Tensor& u_student, const at::Tensor& u_teacher,
    const at::Tensor& unit_weights, const at::Tensor& cu_units, bool need_student,
    bool need_teacher) {
  const auto cu = to_vector(check_relational_loss_args(kBwd, u_student, u_teacher, unit_weights,
                                                       cu_units));
  check_float(kBwd, "grad", grad);
  TORCH_CHECK_VALUE(grad.numel() == 1, kBwd, ": grad must be a scalar, got shape ", grad.sizes());
  const auto acc = acc_dtype(u_student, u_teacher, unit_weights);
  const int64_t B = static_cast<int64_t>(cu.size()) - 1;
  const auto us = u_student.detach(), ut = u_teacher.detach();  // see the forward
  const auto w = unit_weights.detach().to(acc).contiguous();
  auto gs = at::zeros_like(us, at::MemoryFormat::Contiguous);
  auto gt = at::zeros_like(ut, at::MemoryFormat::Contiguous);
  if (!need_student && !need_teacher) return {gs, gt};
  // d loss / d c^S_ij = 2 W_i W_j (cS - cT)_ij / Z; through c = n n^T both factors: 4 M n / Z.
  const auto scale = grad.detach().to(acc).reshape({}) * 4.0 / total_pair_weight(w, cu).clamp_min_(kWeightSumEps);
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t a = cu[b], e = cu[b + 1];
      if (e - a < 2) continue;  // rows stay zero
      auto [ns, nrm_s] = normalize_rows(us.slice(0, a, e).to(acc));
      auto [nt, nrm_t] = normalize_rows(ut.slice(0, a, e).to(acc));
      auto m = at::mm(ns, ns.t()).sub_(at::mm(nt, nt.t()));
      m.diagonal().zero_();
      const auto wb = w.slice(0, a, e);
      m.mul_(wb.unsqueeze(1)).mul_(wb.unsqueeze(0)).mul_(scale);
      if (need_student)
        gs.slice(0, a, e).copy_(normalize_backward(at::mm(m, ns), ns, nrm_s));
      if (need_teacher)
        gt.slice(0, a, e).copy_(normalize_backward(at::mm(m, nt).neg_(), nt, nrm_t));
    }
  });
  return {gs, gt};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(mta_ext, m) {
  m.def(
      "relational_loss(Tensor u_student, Tensor u_teacher, Tensor unit_weights, Tensor cu_units) "
      "-> Tensor");
  m.def(
      "relational_loss_backward(Tensor grad, Tensor u_student, Tensor u_teacher, "
      "Tensor unit_weights, Tensor cu_units, bool need_student=True, bool need_teacher=True) "
      "-> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(mta_ext, CPU, m) {
  m.impl("relational_loss", &relational_loss_cpu);
  m.impl("relational_loss_backward", &relational_loss_backward_cpu);
}

}  // namespace mta_ext
