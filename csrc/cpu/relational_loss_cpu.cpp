// relational_loss (DSA): the CPU kernels (forward and backward); schema and checks in
// ops/relational_loss.cpp.
//
// loss = sum_b sum_{i!=j in b} W_i W_j (cS_ij - cT_ij)^2 / max(sum_b sum_{i!=j in b} W_i W_j, 1e-5)
// with c the cosine Gram matrix of each example's units (docs/DESIGN.md §2.4). Each example block
// is handled on its own: rows normalised (one pass), the Gram difference cS - cT from the two
// Grams' upper block triangles (cpu/symmetric_gram.h) into one N_b x N_b buffer, the weighted
// squared difference reduced in one pass. Memory is O(N_b (N_b + Ds + Dt)) per example in flight,
// never N x N, and no autograd graph: for the gradient the same buffer becomes M = 4 g / Z * W Wᵀ o
// (cS - cT) (zero diagonal), then dL/dNs = M Ns, dL/dNt = -M Nt and the normalisation's backward.
// Three ops share that code: relational_loss (forward), relational_loss_and_grad (forward that also
// returns the gradients for g = 1, so the autograd backward is a scaling: fwd+bwd in one pass) and
// relational_loss_backward (recomputes; used when the plain op is differentiated). Examples run
// in parallel; per-example partial sums are reduced in example order, so results are
// bit-identical across runs and thread counts.
#include "cpu/relational_loss_cpu.h"

#include "cpu/symmetric_gram.h"

#include "common/debug.h"
#include "common/sequential_blas.h"
#include "ops/relational_loss.h"

#include "common/accumulate.h"
#include "common/checks.h"
#include "common/no_autocast.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

namespace mta_ext {

namespace {

constexpr const char* kFwd = "relational_loss";
constexpr const char* kBwd = "relational_loss_backward";
constexpr const char* kFwdGrad = "relational_loss_and_grad";
constexpr double kSerialWork = 1 << 22;  // multiply-adds below which one thread does it all

at::ScalarType acc_dtype(const at::Tensor& a, const at::Tensor& b, const at::Tensor& w) {
  return (a.scalar_type() == at::kDouble || b.scalar_type() == at::kDouble ||
          w.scalar_type() == at::kDouble)
             ? at::kDouble
             : at::kFloat;
}

std::vector<int64_t> to_vector(const at::Tensor& cu) {
  const int64_t* p = cu.const_data_ptr<int64_t>();
  return std::vector<int64_t>(p, p + cu.numel());
}

// Z = sum_b sum_{i != j in b} W_i W_j, per example as 2 sum_j W_j (sum_{i<j} W_i): every term is
// >= 0 and nothing is subtracted (the textbook sum_i W_i (sum W - W_i) cancels catastrophically
// when the weights span many orders of magnitude). Reduced in example order; the caller clamps.
template <typename acc_t>
acc_t total_pair_weight(const acc_t* w, const std::vector<int64_t>& cu) {
  acc_t z = 0;
  for (size_t b = 0; b + 1 < cu.size(); ++b) {
    const int64_t a = cu[b], e = cu[b + 1];
    if (e - a < 2) continue;
    acc_t prefix = 0, zb = 0;
    for (int64_t i = a; i < e; ++i) {
      zb += w[i] * prefix;
      prefix += w[i];
    }
    z += acc_t(2) * zb;
  }
  return z;
}

// Power-of-two scale 2^-e with max|x| * 2^-e in [0.5, 1) (or smaller for rows below ~2^-100 in
// fp32), or 1 when max|x| is 0 or not finite:
// rows are scaled by it (exactly) before squaring, so squares neither overflow nor underflow.
template <typename acc_t>
C10_ALWAYS_INLINE int pow2_exponent(acc_t amax) {
  if (!(amax > acc_t(0)) || !std::isfinite(amax)) return 0;
  int e = 0;
  std::frexp(amax, &e);
  // Not below min_exponent + 25: 2^-e must stay finite (subnormal rows are scaled less).
  return std::max(e, std::numeric_limits<acc_t>::min_exponent + 25);
}

// Writes x[i] / max(|x[i]|, eps) into row i of out ([n, D] contiguous) and the clamped norm into
// nrm[i]. x: [n, D] contiguous, in the accumulation type. The row is scaled by a power of two
// before squaring (no overflow above |x| ~ 1.8e19 in fp32, no underflow below ~1e-19); the
// normalised row is formed in the scaled domain. Non-finite elements propagate (NaN row).
template <typename acc_t>
MTA_CPU_CLONES void normalize_into(const acc_t* x, int64_t n, int64_t D, acc_t* out, acc_t* nrm) {
  for (int64_t i = 0; i < n; ++i) {
    const acc_t* xi = x + i * D;
    acc_t amax = 0;
    for (int64_t d = 0; d < D; ++d) amax = std::max(amax, std::abs(xi[d]));
    const int e = pow2_exponent(amax);
    const acc_t s = std::ldexp(acc_t(1), -e);
    acc_t ss = 0;
#pragma omp simd reduction(+ : ss)
    for (int64_t d = 0; d < D; ++d) ss += (xi[d] * s) * (xi[d] * s);
    // max(|x|, eps) in the scaled domain: |x| s vs eps s.
    const acc_t r = std::max(std::sqrt(ss), static_cast<acc_t>(kCosEps) * s);
    nrm[i] = std::ldexp(r, e);  // the clamped norm |x| (inf only if |x| exceeds the type)
    const acc_t inv = acc_t(1) / r;
    acc_t* o = out + i * D;
    for (int64_t d = 0; d < D; ++d) o[d] = (xi[d] * s) * inv;
  }
}

// Gradient w.r.t. x of a normalised row n = x / max(|x|, eps), given g_n (times `sign`): where
// |x| > eps, (g_n - n (n . g_n)) / |x|; where the norm was clamped, g_n / eps. Written as scalar_t.
template <typename acc_t, typename scalar_t>
MTA_CPU_CLONES void normalize_backward_into(const acc_t* gn, const acc_t* nrows, const acc_t* nrm,
                                            int64_t n, int64_t D, double sign, double k,
                                            scalar_t* out) {
  for (int64_t i = 0; i < n; ++i) {
    const acc_t* g = gn + i * D;
    const acc_t* v = nrows + i * D;
    acc_t dot = 0;
#pragma omp simd reduction(+ : dot)
    for (int64_t d = 0; d < D; ++d) dot += g[d] * v[d];
    if (nrm[i] <= static_cast<acc_t>(kCosEps)) dot = 0;  // clamped norm: plain g / eps
    // k / |x| in double: k (4 g / Z) may be far below the type's range when the weights are
    // tiny while 1 / |x| is large (clamped norms), their product is not.
    const acc_t inv = static_cast<acc_t>(sign * k / static_cast<double>(nrm[i]));
    scalar_t* o = out + i * D;
    for (int64_t d = 0; d < D; ++d) o[d] = static_cast<scalar_t>((g[d] - v[d] * dot) * inv);
  }
}

// sum_{i != j} w_i w_j d_ij^2 over an n x n block whose diagonal the caller zeroed (i == j is
// not a pair). Subtracting the diagonal term from the full row sum instead would cancel: d_ii is
// not 0 when a norm is clamped, and w_i d_ii^2 can dwarf the row's real pairs.
template <typename acc_t>
MTA_CPU_CLONES acc_t weighted_square_sum(const acc_t* dp, const acc_t* wb, int64_t n) {
  acc_t total = 0;
  for (int64_t i = 0; i < n; ++i) {
    const acc_t* di = dp + i * n;
    acc_t row = 0;
#pragma omp simd reduction(+ : row)
    for (int64_t j = 0; j < n; ++j) row += wb[j] * di[j] * di[j];
    total += wb[i] * row;
  }
  return total;
}

// d_ij <- scale w_i w_j d_ij, zero diagonal.
template <typename acc_t>
MTA_CPU_CLONES void scale_to_m(acc_t* dp, const acc_t* wb, int64_t n, acc_t scale) {
  for (int64_t i = 0; i < n; ++i) {
    const acc_t wi = wb[i] * scale;
    acc_t* di = dp + i * n;
    for (int64_t j = 0; j < n; ++j) di[j] *= wi * wb[j];
    di[i] = 0;
  }
}

// One example block [a, e) (n >= 2 units). Computes D = cS - cT with two GEMMs on the normalised
// rows; if num != nullptr stores sum_{i != j} W_i W_j D_ij^2 there; if a gradient is requested
// turns D into M = scale * W Wᵀ o D (zero diagonal) and writes scale-weighted gradients
// (scale = 4 g / Z) of the rows into gs / gt (which may be undefined when not requested).
template <typename acc_t>
void example_block(const at::Tensor& us, const at::Tensor& ut, const acc_t* w, int64_t a, int64_t e,
                   at::ScalarType acc, acc_t* num, double scale, const at::Tensor& gs,
                   const at::Tensor& gt) {
  const SequentialBlas one_blas_thread;  // results independent of the thread count
  const int64_t n = e - a, Ds = us.size(1), Dt = ut.size(1);
  const auto xs = us.slice(0, a, e).to(acc).contiguous();
  const auto xt = ut.slice(0, a, e).to(acc).contiguous();
  auto ns = at::empty({n, Ds}, xs.options()), nt = at::empty({n, Dt}, xs.options());
  auto nrm = at::empty({2, n}, xs.options());
  acc_t* nrm_s = nrm.mutable_data_ptr<acc_t>();
  acc_t* nrm_t = nrm_s + n;
  normalize_into<acc_t>(xs.const_data_ptr<acc_t>(), n, Ds, ns.mutable_data_ptr<acc_t>(), nrm_s);
  normalize_into<acc_t>(xt.const_data_ptr<acc_t>(), n, Dt, nt.mutable_data_ptr<acc_t>(), nrm_t);
  // cS - cT, each Gram from its upper block triangle (about half the FLOPs); identical student
  // and teacher inputs give exactly 0.
  auto d = symmetric_gram_difference(ns, nt);
  acc_t* dp = d.mutable_data_ptr<acc_t>();
  for (int64_t i = 0; i < n; ++i) dp[i * n + i] = 0;  // i == j is not a pair
  const acc_t* wb = w + a;
  if (num != nullptr) *num = weighted_square_sum<acc_t>(dp, wb, n);
  if (!gs.defined() && !gt.defined()) return;
  scale_to_m<acc_t>(dp, wb, n, acc_t(1));  // M' = W Wᵀ o D; the scale k is applied per row
  // dL/dNs = M Ns; dL/dNt = -M Nt (the teacher Gram enters with a minus sign).
  if (gs.defined()) {
    const auto gn = at::mm(d, ns);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gs.scalar_type(), "rl_grad_s", [&] {
      normalize_backward_into<acc_t, scalar_t>(gn.const_data_ptr<acc_t>(),
                                               ns.const_data_ptr<acc_t>(), nrm_s, n, Ds, 1.0, scale,
                                               gs.mutable_data_ptr<scalar_t>() + a * Ds);
    });
  }
  if (gt.defined()) {
    const auto gn = at::mm(d, nt);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gt.scalar_type(), "rl_grad_t", [&] {
      normalize_backward_into<acc_t, scalar_t>(gn.const_data_ptr<acc_t>(),
                                               nt.const_data_ptr<acc_t>(), nrm_t, n, Dt, -1.0,
                                               scale, gt.mutable_data_ptr<scalar_t>() + a * Dt);
    });
  }
}

// What one call of the shared driver computes.
struct Request {
  bool want_loss = false;     // compute the loss (else an undefined tensor is returned)
  double grad_scale = 0.0;    // upstream gradient g of the gradients
  bool need_student = false;  // gradients produced (zero rows for examples with < 2 units),
  bool need_teacher = false;  // shapes [0, D] when not requested
  bool grads_in_acc = false;  // keep the gradients in the accumulation dtype
};

// Shared driver of the three ops.
std::tuple<at::Tensor, at::Tensor, at::Tensor> run(const char* op, const at::Tensor& u_student,
                                                   const at::Tensor& u_teacher,
                                                   const at::Tensor& unit_weights,
                                                   const at::Tensor& cu_units,
                                                   at::OptionalIntArrayRef plan_sizes,
                                                   const Request& req) {
  const auto cu_t = check_relational_loss_args(op, u_student, u_teacher, unit_weights, cu_units);
  // The CPU kernel needs no plan; the host metadata is still checked (or its absence counted).
  resolve_plan_sizes(op, cu_t, u_student.size(0), plan_sizes);
  const auto cu = to_vector(cu_t);
  const bool want_loss = req.want_loss, need_student = req.need_student;
  const bool need_teacher = req.need_teacher, grads_in_acc = req.grads_in_acc;
  const double grad_scale = req.grad_scale;
  const auto acc = acc_dtype(u_student, u_teacher, unit_weights);
  const int64_t B = static_cast<int64_t>(cu.size()) - 1;
  // Detached: the work below runs on OpenMP threads that do not inherit the dispatcher's
  // "below autograd" state, and must not record a graph.
  const auto us = u_student.detach(), ut = u_teacher.detach();
  // Weights divided by their maximum c (the loss is homogeneous of degree 0 in W apart from the
  // clamp, which becomes max(Z / c^2, eps / c^2)): no product W_i W_j overflows or underflows.
  // Weights were checked finite and >= 0 above.
  auto w = unit_weights.detach().to(acc).contiguous();
  double eps_eff = kWeightSumEps;
  if (w.numel() > 0) {
    const double c = w.max().item<double>();  // CPU tensor: no device sync
    if (c > 0) {
      w = w.div(c);
      eps_eff = kWeightSumEps / c / c;
    }
  }
  const int64_t N = us.size(0), Ds = us.size(1), Dt = ut.size(1);
  // The fused op keeps its gradients (for an upstream gradient of 1) in the accumulation type:
  // the autograd backward scales them by the real upstream gradient before rounding to the
  // input dtype, so fp16/bf16 neither overflow nor underflow under loss scaling.
  // Always computed in the accumulation dtype and rounded to the input dtype once at the end
  // (the separate backward), so fused and separate gradients share their bits.
  const auto gopt_s = us.options().dtype(acc);
  const auto gopt_t = ut.options().dtype(acc);
  at::Tensor gs = at::empty({need_student ? N : 0, Ds}, gopt_s);
  at::Tensor gt = at::empty({need_teacher ? N : 0, Dt}, gopt_t);
  for (int64_t b = 0; b < B; ++b) {  // rows without a pair get no gradient
    if (cu[b + 1] - cu[b] >= 2) continue;
    if (need_student) gs.slice(0, cu[b], cu[b + 1]).zero_();
    if (need_teacher) gt.slice(0, cu[b], cu[b + 1]).zero_();
  }
  const at::Tensor gs_arg = need_student ? gs : at::Tensor();
  const at::Tensor gt_arg = need_teacher ? gt : at::Tensor();
  at::Tensor loss;
  AT_DISPATCH_FLOATING_TYPES(acc, "relational_loss_cpu", [&] {
    using acc_t = scalar_t;
    const acc_t* wp = w.const_data_ptr<acc_t>();
    // Z' and the clamp in double: eps / c^2 may exceed the type when the weights are tiny.
    const double z = std::max(static_cast<double>(total_pair_weight<acc_t>(wp, cu)), eps_eff);
    // d loss / d cS_ij = 2 W_i W_j (cS - cT)_ij / Z, and c = n nᵀ uses n twice: 4 M n / Z.
    const double scale = 4.0 * grad_scale / z;
    std::vector<acc_t> num(B, acc_t(0));
    // Tiny batches run inline: an OpenMP region costs more than the work (and much more on a
    // loaded machine, where a descheduled worker stalls the whole region).
    double work = 0;
    for (int64_t b = 0; b < B; ++b) {
      const double n = static_cast<double>(cu[b + 1] - cu[b]);
      work += n * n * static_cast<double>(Ds + Dt);
    }
    const int64_t grain = work < kSerialWork ? std::max<int64_t>(B, 1) : 1;
    at::parallel_for(0, B, grain, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        if (cu[b + 1] - cu[b] < 2) continue;  // no pair i != j
        example_block<acc_t>(us, ut, wp, cu[b], cu[b + 1], acc, want_loss ? &num[b] : nullptr,
                             scale, gs_arg, gt_arg);
      }
    });
    if (want_loss) {
      acc_t sum = 0;
      for (int64_t b = 0; b < B; ++b) sum += num[b];  // fixed order
      loss = at::full({}, static_cast<double>(sum) / z, w.options());
    }
  });
  if (!grads_in_acc) {
    gs = gs.to(us.scalar_type());
    gt = gt.to(ut.scalar_type());
  }
  return {loss, gs, gt};
}

}  // namespace

at::Tensor relational_loss_cpu(const at::Tensor& u_student, const at::Tensor& u_teacher,
                               const at::Tensor& unit_weights, const at::Tensor& cu_units,
                               at::OptionalIntArrayRef plan_sizes) {
  const NoAutocast no_autocast;
  Request req;
  req.want_loss = true;
  return std::get<0>(run(kFwd, u_student, u_teacher, unit_weights, cu_units, plan_sizes, req));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> relational_loss_and_grad_cpu(
    const at::Tensor& u_student, const at::Tensor& u_teacher, const at::Tensor& unit_weights,
    const at::Tensor& cu_units, bool need_student, bool need_teacher,
    at::OptionalIntArrayRef plan_sizes) {
  const NoAutocast no_autocast;
  Request req;
  req.want_loss = true;
  req.grad_scale = 1.0;
  req.need_student = need_student;
  req.need_teacher = need_teacher;
  req.grads_in_acc = true;
  return run(kFwdGrad, u_student, u_teacher, unit_weights, cu_units, plan_sizes, req);
}

std::tuple<at::Tensor, at::Tensor> relational_loss_backward_cpu(
    const at::Tensor& grad, const at::Tensor& u_student, const at::Tensor& u_teacher,
    const at::Tensor& unit_weights, const at::Tensor& cu_units, bool need_student,
    bool need_teacher, at::OptionalIntArrayRef plan_sizes) {
  const NoAutocast no_autocast;
  check_float(kBwd, "grad", grad);
  TORCH_CHECK_VALUE(grad.numel() == 1, kBwd, ": grad must be a scalar, got shape ", grad.sizes());
  Request req;
  req.grad_scale = grad.detach().to(at::kDouble).item<double>();  // a CPU tensor: no sync
  req.need_student = need_student;
  req.need_teacher = need_teacher;
  auto [loss, gs, gt] = run(kBwd, u_student, u_teacher, unit_weights, cu_units, plan_sizes, req);
  // Not-requested gradients are returned as zeros of the input's shape (schema: two tensors).
  if (!need_student) gs = at::zeros_like(u_student, at::MemoryFormat::Contiguous);
  if (!need_teacher) gt = at::zeros_like(u_teacher, at::MemoryFormat::Contiguous);
  return {gs, gt};
}

}  // namespace mta_ext
