// row_cosine: the CPU kernels; schema and checks in ops/row_cosine.cpp.
//
// Memory-bound: one pass over p's row and h's row per row (rows in parallel, each row's sums in
// a fixed order: bit-identical across runs and thread counts). The forward accumulates the three
// sums in double whatever the input type (the cost is the memory traffic, not the arithmetic),
// so fp32 inputs get a cosine correct to about one fp32 rounding. The backward writes each
// gradient row once, a h_r - β p, also computed in double: a = g / (max‖p‖ max‖h‖) leaves the
// float range for rows of large norm (1e28 and 1e10 give 4e-39), where float math returned 0.
#include "cpu/row_cosine_cpu.h"

#include "ops/row_cosine.h"

#include "common/accumulate.h"
#include "common/no_autocast.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace mta_ext {
namespace {

constexpr const char* kFwd = "row_cosine";
constexpr const char* kBwd = "row_cosine_backward";

// About 64k elements per parallel chunk: rows are short next to an OpenMP region's cost.
int64_t grain(int64_t D) { return std::max<int64_t>(1, 65536 / std::max<int64_t>(D, 1)); }

// The row of h compared with row i of p; -1 when rows[i] is out of range (only reachable when
// the value checks were skipped: the row's outputs are NaN, nothing is read).
inline int64_t h_row(const int64_t* rows, int64_t i, int64_t M) {
  const int64_t r = rows == nullptr ? i : rows[i];
  return (r >= 0 && r < M) ? r : -1;
}

template <typename scalar_t>
MTA_CPU_CLONES void dot_and_squares(const scalar_t* __restrict p, const scalar_t* __restrict h,
                                    int64_t D, double* out) {
  double dot = 0, pp = 0, hh = 0;
#pragma omp simd reduction(+ : dot, pp, hh)
  for (int64_t d = 0; d < D; ++d) {
    const double a = static_cast<double>(p[d]), b = static_cast<double>(h[d]);
    dot += a * b;
    pp += a * a;
    hh += b * b;
  }
  out[0] = dot;
  out[1] = pp;
  out[2] = hh;
}

// dst[d] = a x[d] - b y[d], in double, rounded once
template <typename scalar_t>
MTA_CPU_CLONES void axmby(scalar_t* __restrict dst, const scalar_t* __restrict x,
                          const scalar_t* __restrict y, double a, double b, int64_t D) {
#pragma omp simd
  for (int64_t d = 0; d < D; ++d)
    dst[d] = static_cast<scalar_t>(a * static_cast<double>(x[d]) - b * static_cast<double>(y[d]));
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> row_cosine_cpu(
    const at::Tensor& p_in, const at::Tensor& h_in, const std::optional<at::Tensor>& rows_in,
    double eps) {
  const NoAutocast no_autocast;
  const auto a = prepare_row_cosine(kFwd, p_in, h_in, rows_in, eps);
  const int64_t n = a.p.size(0), D = a.p.size(1), M = a.h.size(0);
  const auto opts = a.p.options().dtype(row_cosine_acc(a.p.scalar_type()));
  auto cos = at::empty({n}, opts), np = at::empty({n}, opts), nh = at::empty({n}, opts);
  const int64_t* rows = a.rows.defined() ? a.rows.const_data_ptr<int64_t>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.p.scalar_type(), kFwd, [&] {
    using acc_t = acc_type<scalar_t>;
    const scalar_t* pp = a.p.const_data_ptr<scalar_t>();
    const scalar_t* hp = a.h.const_data_ptr<scalar_t>();
    acc_t* co = cos.mutable_data_ptr<acc_t>();
    acc_t* po = np.mutable_data_ptr<acc_t>();
    acc_t* ho = nh.mutable_data_ptr<acc_t>();
    at::parallel_for(0, n, grain(D), [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t r = h_row(rows, i, M);
        if (r < 0) {
          co[i] = po[i] = ho[i] = std::numeric_limits<acc_t>::quiet_NaN();
          continue;
        }
        double s[3];
        dot_and_squares(pp + i * D, hp + r * D, D, s);
        const double n_p = std::sqrt(s[1]), n_h = std::sqrt(s[2]);
        po[i] = static_cast<acc_t>(n_p);
        ho[i] = static_cast<acc_t>(n_h);
        co[i] = static_cast<acc_t>(s[0] / (std::max(n_p, eps) * std::max(n_h, eps)));
      }
    });
  });
  return {cos, np, nh};
}

std::tuple<at::Tensor, at::Tensor> row_cosine_backward_cpu(
    const at::Tensor& grad_cos, const at::Tensor& p_in, const at::Tensor& h_in,
    const std::optional<at::Tensor>& rows_in, const at::Tensor& norm_p, const at::Tensor& norm_h,
    const at::Tensor& cos, double eps, std::array<bool, 2> output_mask) {
  const NoAutocast no_autocast;
  const auto b =
      prepare_row_cosine_backward(kBwd, grad_cos, p_in, h_in, rows_in, norm_p, norm_h, cos, eps);
  const auto& a = b.x;
  const auto &g = b.grad_cos, &n_p = b.norm_p, &n_h = b.norm_h, &c = b.cos;
  const int64_t n = a.p.size(0), D = a.p.size(1), M = a.h.size(0);
  auto gp = at::empty({output_mask[0] ? n : 0, D}, a.p.options());
  auto gh = at::empty({output_mask[1] ? n : 0, D}, a.p.options());
  const int64_t* rows = a.rows.defined() ? a.rows.const_data_ptr<int64_t>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.p.scalar_type(), kBwd, [&] {
    using acc_t = acc_type<scalar_t>;
    const scalar_t* pp = a.p.const_data_ptr<scalar_t>();
    const scalar_t* hp = a.h.const_data_ptr<scalar_t>();
    const acc_t* gi = g.const_data_ptr<acc_t>();
    const acc_t* npi = n_p.const_data_ptr<acc_t>();
    const acc_t* nhi = n_h.const_data_ptr<acc_t>();
    const acc_t* ci = c.const_data_ptr<acc_t>();
    scalar_t* gpo = output_mask[0] ? gp.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* gho = output_mask[1] ? gh.mutable_data_ptr<scalar_t>() : nullptr;
    const double e = eps;
    at::parallel_for(0, n, grain(D), [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t r = h_row(rows, i, M);
        if (r < 0) {
          const auto nan = static_cast<scalar_t>(std::numeric_limits<acc_t>::quiet_NaN());
          if (gpo != nullptr) std::fill(gpo + i * D, gpo + (i + 1) * D, nan);
          if (gho != nullptr) std::fill(gho + i * D, gho + (i + 1) * D, nan);
          continue;
        }
        const double np = npi[i], nh = nhi[i], g = gi[i];
        const double cp = std::max(np, e), ch = std::max(nh, e);
        const double al = g / (cp * ch), gc = g * static_cast<double>(ci[i]);
        const scalar_t* hr = hp + r * D;
        if (gpo != nullptr)
          axmby(gpo + i * D, hr, pp + i * D, al, np > e ? gc / (cp * np) : 0.0, D);
        if (gho != nullptr)
          axmby(gho + i * D, pp + i * D, hr, al, nh > e ? gc / (ch * nh) : 0.0, D);
      }
    });
  });
  return {gp, gh};
}

}  // namespace mta_ext
