// token_salience: the CPU kernel; schema and checks in ops/token_salience.cpp.
//
// w_t = (1/T_valid) sum_s softmax_t(S)[s,t], S = Ĥ Ĥᵀ / sqrt(D) with padding keys and the diagonal
// masked (docs/DESIGN.md §2.1). Padding is dropped first (valid rows compacted); the rows are
// normalised in one fused gather pass per example. Then, per example with n valid tokens:
//  * n <= kSymmetricMaxKeys (2048), the common case: one work item per example (examples run in
//    parallel) builds S (at most 16 MB) from its upper block triangle only (S is symmetric: about
//    half the matmul FLOPs), takes its row softmax and sums the columns. Memory in flight is per
//    thread (n D + n^2), not per batch;
//  * larger n, one example at a time, never an n x n matrix: groups of kRowTile-query row tiles
//    run in parallel against the whole key set (a kRowTile x n tile) while n <= kWholeRowMaxKeys,
//    beyond that against key blocks with an online softmax (pass 1: running row max and sum;
//    pass 2: recompute and accumulate the received attention). key_block > 0 forces this path.
// Each group writes its own column-sum buffer, reduced in group order: bit-identical across runs
// and thread counts.
#include "cpu/token_salience_cpu.h"

#include "cpu/symmetric_gram.h"

#include "ops/token_salience.h"

#include "common/checks.h"
#include "common/no_autocast.h"
#include "common/sequential_blas.h"

#include "common/accumulate.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace mta_ext {

namespace {

constexpr const char* kOp = "token_salience";
constexpr int64_t kRowTile = 64;              // queries per tile
constexpr int64_t kMaxGroupsPerExample = 16;  // work items per example (fixed: determinism)
constexpr int64_t kWholeRowMaxKeys = 8192;    // above this, stream over key blocks
constexpr int64_t kAutoKeyBlock = 1024;
constexpr int64_t kSymmetricMaxKeys = 2048;  // up to this, build S once from its upper half
constexpr double kSerialWork = 1 << 22;      // multiply-adds below which one thread does it all

// y = x / (std(x) + eps) * D^-1/4 for one row: Bessel-corrected std (0 when D == 1, where it is
// undefined), mean and variance accumulated in acc_t with vectorised reductions on the row scaled
// by a power of two (max |x| 2^-e in [0.5, 1): the squared deviations neither overflow above
// |x| ~ 1.8e19 in fp32 nor underflow), combined in double. Non-finite elements propagate (NaN).
template <typename scalar_t, typename acc_t>
MTA_CPU_CLONES void normalize_row(const scalar_t* x, acc_t* y, int64_t D) {
  // A vectorised max (an OpenMP reduction; a std::max loop stays scalar without -ffast-math).
  // max is exact, so the order does not matter; a NaN element makes the row NaN either way.
  acc_t amax = 0;
#pragma omp simd reduction(max : amax)
  for (int64_t d = 0; d < D; ++d) {
    const acc_t a = std::abs(static_cast<acc_t>(x[d]));
    amax = a > amax ? a : amax;
  }
  int e = 0;
  if (amax > acc_t(0) && std::isfinite(amax)) std::frexp(amax, &e);
  e = std::max(e, std::numeric_limits<acc_t>::min_exponent + 25);  // 2^-e stays finite
  const acc_t s = std::ldexp(acc_t(1), -e);
  acc_t sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t d = 0; d < D; ++d) sum += static_cast<acc_t>(x[d]) * s;
  const acc_t mean = static_cast<acc_t>(static_cast<double>(sum) / D);
  acc_t ss = 0;
#pragma omp simd reduction(+ : ss)
  for (int64_t d = 0; d < D; ++d) {
    const acc_t c = static_cast<acc_t>(x[d]) * s - mean;
    ss += c * c;
  }
  const double sd = D > 1 ? std::ldexp(std::sqrt(static_cast<double>(ss) / (D - 1)), e) : 0.0;
  const acc_t scale = static_cast<acc_t>(std::pow(double(D), -0.25) / (sd + kSalienceStdEps));
  for (int64_t d = 0; d < D; ++d) y[d] = static_cast<acc_t>(x[d]) * scale;
}

// Column sums of diag(inv_l) E, i.e. inv_lᵀ E, as a [1, rows] x [rows, cols] product (much
// faster than a gemv on the transposed view): the online softmax's second pass.
at::Tensor received(const at::Tensor& e, const at::Tensor& inv_l) {
  return at::mm(inv_l.unsqueeze(0), e).squeeze(0);
}

// Adds to col the attention the keys receive from whole query rows s ([rows, keys], the masked
// entries already -inf): ATen's row softmax (max, exp and sum in its vectorised row passes: ~35 %
// faster at 512 keys than separate amax, sub, exp, sum and a [1, rows] x [rows, keys] product)
// and its column sums.
void add_received(const at::Tensor& s, const at::Tensor& col) {
  col.add_(at::_softmax(s, /*dim=*/1, /*half_to_float=*/false).sum(0));
}

// Adds the received attention of rows [r0, r1) of one example to col[0..n).
// hn: [n, D] normalised rows of the example, already scaled by D^-1/4.
void rows_whole(const at::Tensor& hn, int64_t r0, int64_t r1, const at::Tensor& col) {
  auto s = at::mm(hn.slice(0, r0, r1), hn.t());  // [rows, n]
  s.diagonal(r0).fill_(-std::numeric_limits<double>::infinity());
  add_received(s, col);
}

// The whole example at once: S from its upper block triangle (S = Sᵀ), then its rows' received
// attention.
void example_symmetric(const at::Tensor& hn, const at::Tensor& col) {
  auto s = symmetric_gram(hn);
  s.diagonal().fill_(-std::numeric_limits<double>::infinity());
  add_received(s, col);
}

void rows_streamed(const at::Tensor& hn, int64_t r0, int64_t r1, int64_t kb,
                   const at::Tensor& col) {
  const int64_t n = hn.size(0);
  const auto q = hn.slice(0, r0, r1);
  const double lowest = std::numeric_limits<double>::lowest();
  // Running max starts at the lowest finite value (not -inf) so that a block whose only key is
  // the masked diagonal gives exp(-inf) = 0 instead of exp(-inf - -inf) = NaN.
  auto m = at::full(
      {r1 - r0},
      at::Scalar(hn.scalar_type() == at::kDouble ? lowest
                                                 : double(std::numeric_limits<float>::lowest())),
      hn.options());
  auto l = at::zeros({r1 - r0}, hn.options());
  const double ninf = -std::numeric_limits<double>::infinity();
  for (int64_t k0 = 0; k0 < n; k0 += kb) {  // pass 1: row max and normaliser
    const int64_t k1 = std::min(n, k0 + kb);
    auto s = at::mm(q, hn.slice(0, k0, k1).t());
    s.diagonal(r0 - k0).fill_(ninf);
    auto m_new = at::maximum(m, s.amax(1));
    l.mul_((m - m_new).exp_()).add_(s.sub_(m_new.unsqueeze(1)).exp_().sum(1));
    m = m_new;
  }
  auto inv_l = l.reciprocal_();
  for (int64_t k0 = 0; k0 < n; k0 += kb) {  // pass 2: received attention
    const int64_t k1 = std::min(n, k0 + kb);
    auto s = at::mm(q, hn.slice(0, k0, k1).t());
    s.diagonal(r0 - k0).fill_(ninf);
    s.sub_(m.unsqueeze(1)).exp_();
    col.slice(0, k0, k1).add_(received(s, inv_l));
  }
}

// Gathers rows[0..n) of hc ([B*T, D] contiguous) into dst ([n, D], accumulation type),
// normalised: x / (std(x) + eps) * D^-1/4 (the 1/sqrt(D) of S folded into both operands).
void normalize_rows(const at::Tensor& hc, const int64_t* rows, int64_t n, int64_t D,
                    const at::Tensor& dst, bool parallel) {
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, hc.scalar_type(), "token_salience_norm", [&] {
        using acc_t = acc_type<scalar_t>;
        const scalar_t* hp = hc.const_data_ptr<scalar_t>();
        acc_t* op = dst.mutable_data_ptr<acc_t>();
        const auto body = [&](int64_t r0, int64_t r1) {
          for (int64_t r = r0; r < r1; ++r)
            normalize_row<scalar_t, acc_t>(hp + rows[r] * D, op + r * D, D);
        };
        if (parallel)
          at::parallel_for(0, n, std::max<int64_t>(1, 65536 / D), body);  // >= 64k elements a chunk
        else
          body(0, n);
      });
}

}  // namespace

at::Tensor token_salience_cpu(const at::Tensor& hidden, const at::Tensor& attention_mask,
                              int64_t key_block) {
  const NoAutocast no_autocast;
  const auto mask = check_token_salience_args(kOp, hidden, attention_mask, key_block);
  const int64_t B = hidden.size(0), T = hidden.size(1), D = hidden.size(2);
  auto out = at::zeros({B, T}, hidden.options().dtype(at::kFloat));
  if (B == 0 || T == 0 || D == 0) return out;
  const auto acc = hidden.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;

  // Valid token indices per example (flattened), and the compacted normalised rows.
  const bool* mp = mask.const_data_ptr<bool>();
  std::vector<int64_t> valid_idx;
  std::vector<int64_t> start(B + 1, 0);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < T; ++t)
      if (mp[b * T + t]) valid_idx.push_back(b * T + t);
    start[b + 1] = static_cast<int64_t>(valid_idx.size());
  }
  const int64_t total = start[B];
  if (total == 0) return out;
  auto idx = at::from_blob(valid_idx.data(), {total}, at::kLong).clone();
  const auto hc = hidden.detach().reshape({B * T, D}).contiguous();
  const auto opts = hidden.options().dtype(acc);
  auto w = at::zeros({total}, opts);  // received attention / T_valid, compacted
  const auto count = [&](int64_t b) { return start[b + 1] - start[b]; };

  // Phase 1: examples with 2 <= n <= kSymmetricMaxKeys (the common case), one work item each:
  // normalise its rows into a private buffer, build S, reduce. Peak memory is per thread in
  // flight (n D + n^2), not the whole batch.
  std::vector<int64_t> small;
  double work = 0;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t n = count(b);
    if (n >= 2 && key_block == 0 && n <= kSymmetricMaxKeys) {
      small.push_back(b);
      work += static_cast<double>(n) * n * D;
    }
  }
  const int64_t n_small = static_cast<int64_t>(small.size());
  // Tiny batches run inline (an OpenMP region would cost more than the work).
  const int64_t grain = work < kSerialWork ? std::max<int64_t>(n_small, 1) : 1;
  at::parallel_for(0, n_small, grain, [&](int64_t i0, int64_t i1) {
    const SequentialBlas one_blas_thread;  // results independent of the thread count
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = small[i], n = count(b);
      auto hn = at::empty({n, D}, opts);
      normalize_rows(hc, valid_idx.data() + start[b], n, D, hn, /*parallel=*/false);
      example_symmetric(hn, w.slice(0, start[b], start[b + 1]));
    }
  });

  // Phase 2: larger examples (or key_block > 0), one at a time, never an n x n matrix: rows
  // normalised in parallel, then <= 16 groups of row tiles in parallel, each with its own
  // column-sum buffer, reduced in group order.
  for (int64_t b = 0; b < B; ++b) {
    const int64_t n = count(b);
    if (n < 2 || (key_block == 0 && n <= kSymmetricMaxKeys)) continue;
    auto hn = at::empty({n, D}, opts);
    normalize_rows(hc, valid_idx.data() + start[b], n, D, hn, /*parallel=*/true);
    const int64_t tiles = (n + kRowTile - 1) / kRowTile;
    const int64_t groups = std::min(tiles, kMaxGroupsPerExample);
    auto partial = at::zeros({groups, n}, opts);
    const bool whole = key_block == 0 && n <= kWholeRowMaxKeys;
    const int64_t kb = key_block > 0 ? key_block : kAutoKeyBlock;
    at::parallel_for(0, groups, 1, [&](int64_t g0, int64_t g1) {
      const SequentialBlas one_blas_thread;
      for (int64_t g = g0; g < g1; ++g) {
        const int64_t r0 = tiles * g / groups * kRowTile;
        const int64_t r1 = std::min(n, tiles * (g + 1) / groups * kRowTile);
        const auto col = partial[g];
        for (int64_t r = r0; r < r1; r += kRowTile) {
          const int64_t re = std::min(r1, r + kRowTile);
          if (whole)
            rows_whole(hn, r, re, col);
          else
            rows_streamed(hn, r, re, kb, col);
        }
      }
    });
    auto wb = w.slice(0, start[b], start[b + 1]);
    for (int64_t g = 0; g < groups; ++g) wb.add_(partial[g]);  // fixed order
  }

  // Scale by 1/T_valid and scatter back to the padded layout.
  for (int64_t b = 0; b < B; ++b)
    if (count(b) >= 2) w.slice(0, start[b], start[b + 1]).div_(double(count(b)));
  out.view({B * T}).index_copy_(0, idx, w.to(at::kFloat));
  return out;
}

}  // namespace mta_ext
