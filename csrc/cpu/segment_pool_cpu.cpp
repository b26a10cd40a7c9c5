// segment_pool: the CPU kernels (forward and backward); schema and checks in ops/segment_pool.cpp.
//
// Forward is unit-parallel: each unit owns one output row. Backward is token-parallel: each
// token gathers the units that contain it from a CSR incidence list built in unit order, so
// every grad row is written by one thread in a fixed order -- bit-identical across runs even
// when ranges overlap, with no atomics.
#include "cpu/segment_pool_cpu.h"

#include "ops/segment_pool.h"

#include "common/accumulate.h"
#include "common/checks.h"
#include "common/no_autocast.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

namespace mta_ext {

namespace {

constexpr const char* kFwd = "segment_pool";
constexpr const char* kBwd = "segment_pool_backward";

}  // namespace

at::Tensor segment_pool_cpu(const at::Tensor& hidden, const at::Tensor& ranges,
                            const std::optional<at::Tensor>& weights,
                            std::optional<int64_t> num_incidences) {
  const NoAutocast no_autocast;
  check_float(kFwd, "hidden", hidden);
  check_dim(kFwd, "hidden", hidden, 2, "[M, D]");
  const int64_t M = hidden.size(0), D = hidden.size(1);
  auto a = prepare_segment_pool(kFwd, hidden, ranges, weights, M, "hidden.size(0)");
  if (num_incidences.has_value()) num_incidences_of(kFwd, a.ranges, num_incidences);
  const int64_t N = a.ranges.size(0);
  auto out = at::empty({N, D}, hidden.options());
  if (N == 0 || D == 0) return out;

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, hidden.scalar_type(), "segment_pool_cpu", [&] {
        using acc_t = acc_type<scalar_t>;
        const scalar_t* h = a.hidden.const_data_ptr<scalar_t>();
        const int64_t* r = a.ranges.const_data_ptr<int64_t>();
        const acc_t* w = a.weights ? a.weights->const_data_ptr<acc_t>() : nullptr;
        scalar_t* o = out.mutable_data_ptr<scalar_t>();
        const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(D, 1));
        at::parallel_for(0, N, grain, [&](int64_t k0, int64_t k1) {
          std::vector<acc_t> acc(D);
          for (int64_t k = k0; k < k1; ++k) {
            const int64_t s = r[2 * k], e = r[2 * k + 1];
            std::fill(acc.begin(), acc.end(), acc_t(0));
            acc_t wmax = 1;  // weights divided by the unit's largest (see unit_inv_denominator)
            if (w) {
              wmax = 0;
              for (int64_t t = s; t < e; ++t) wmax = std::max(wmax, w[t]);
            }
            acc_t wsum = 0;
            for (int64_t t = s; t < e; ++t) {
              const acc_t wt = w ? normalised_weight(w[t], wmax) : acc_t(1);
              wsum += wt;
              axpy_row(acc.data(), h + t * D, wt, D);
            }
            store_scaled_row(o + k * D, acc.data(), unit_inv_denominator(wsum, wmax), D);
          }
        });
      });
  return out;
}

at::Tensor segment_pool_backward_cpu(const at::Tensor& grad_out, const at::Tensor& ranges,
                                     const std::optional<at::Tensor>& weights, int64_t num_rows,
                                     std::optional<int64_t> num_incidences) {
  const NoAutocast no_autocast;
  check_float(kBwd, "grad_out", grad_out);
  check_dim(kBwd, "grad_out", grad_out, 2, "[N, D]");
  TORCH_CHECK_VALUE(num_rows >= 0, kBwd, ": num_rows must be >= 0, got ", num_rows);
  auto a = prepare_segment_pool(kBwd, grad_out, ranges, weights, num_rows, "num_rows");
  const int64_t N = a.ranges.size(0), D = grad_out.size(1), M = num_rows;
  TORCH_CHECK_VALUE(grad_out.size(0) == N, kBwd, ": grad_out has ", grad_out.size(0),
                    " rows but ranges has ", N, " units");
  auto grad_hidden = at::empty({M, D}, grad_out.options());
  if (M == 0 || D == 0) return grad_hidden;

  // CSR incidence token -> units, in increasing unit order (the fixed summation order).
  const int64_t* r = a.ranges.const_data_ptr<int64_t>();
  std::vector<int64_t> row_ptr(M + 1, 0);
  for (int64_t k = 0; k < N; ++k)
    for (int64_t t = r[2 * k]; t < r[2 * k + 1]; ++t) ++row_ptr[t + 1];
  for (int64_t t = 0; t < M; ++t) row_ptr[t + 1] += row_ptr[t];
  TORCH_CHECK_VALUE(!num_incidences || *num_incidences == row_ptr[M], kBwd,
                    ": num_incidences = ", num_incidences.value_or(0), " but the ranges cover ",
                    row_ptr[M], " (token, unit) pairs");
  std::vector<int64_t> units(row_ptr[M]);
  {
    std::vector<int64_t> cursor(row_ptr.begin(), row_ptr.end() - 1);
    for (int64_t k = 0; k < N; ++k)
      for (int64_t t = r[2 * k]; t < r[2 * k + 1]; ++t) units[cursor[t]++] = k;
  }

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, grad_out.scalar_type(), "segment_pool_backward_cpu", [&] {
        using acc_t = acc_type<scalar_t>;
        const scalar_t* g = a.hidden.const_data_ptr<scalar_t>();
        const acc_t* w = a.weights ? a.weights->const_data_ptr<acc_t>() : nullptr;
        scalar_t* gh = grad_hidden.mutable_data_ptr<scalar_t>();
        // Per unit, exactly as the forward computes them: wmax and the normalised denominator.
        std::vector<acc_t> inv(N), wmaxs(N, acc_t(1));
        at::parallel_for(0, N, 1024, [&](int64_t k0, int64_t k1) {
          for (int64_t k = k0; k < k1; ++k) {
            acc_t wmax = 1;
            if (w) {
              wmax = 0;
              for (int64_t t = r[2 * k]; t < r[2 * k + 1]; ++t) wmax = std::max(wmax, w[t]);
            }
            acc_t wsum = 0;
            for (int64_t t = r[2 * k]; t < r[2 * k + 1]; ++t)
              wsum += w ? normalised_weight(w[t], wmax) : acc_t(1);
            inv[k] = unit_inv_denominator(wsum, wmax);
            wmaxs[k] = wmax;
          }
        });
        const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(D, 1));
        at::parallel_for(0, M, grain, [&](int64_t t0, int64_t t1) {
          std::vector<acc_t> acc(D);
          for (int64_t t = t0; t < t1; ++t) {
            const int64_t j0 = row_ptr[t], j1 = row_ptr[t + 1];
            if (j0 == j1) {
              zero_row(gh + t * D, D);
              continue;
            }
            std::fill(acc.begin(), acc.end(), acc_t(0));
            // grad_hidden[t] = sum_k (w_t / wmax_k) inv_k grad_out[k]: each factor is <= 1.
            for (int64_t j = j0; j < j1; ++j) {
              const int64_t k = units[j];
              const acc_t f = w ? normalised_weight(w[t], wmaxs[k]) * inv[k] : inv[k];
              axpy_row(acc.data(), g + k * D, f, D);
            }
            store_scaled_row(gh + t * D, acc.data(), acc_t(1), D);
          }
        });
      });
  return grad_hidden;
}

}  // namespace mta_ext
