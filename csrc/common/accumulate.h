// The one reduction abstraction every CPU kernel shares: rows of any float type are
// accumulated in `acc_t` (float for fp16/bf16/fp32, double for fp64), then scaled and stored
// back in the input type. Loops are written so that gcc vectorises them at -O3.
#pragma once

#include <ATen/OpMathType.h>
#include <c10/macros/Macros.h>

#include <cstdint>

// The build targets baseline x86-64 (portable wheels); row loops marked MTA_CPU_CLONES are also
// compiled for AVX2 and AVX-512 and picked at load time (GCC function multiversioning). BLAS is
// already dispatched at run time by torch.
#if defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__) && defined(__x86_64__)
#define MTA_CPU_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MTA_CPU_CLONES
#endif

namespace mta_ext {

template <typename scalar_t>
using acc_type = at::opmath_type<scalar_t>;

// acc[d] += a * x[d]
template <typename acc_t, typename scalar_t>
C10_ALWAYS_INLINE void axpy_row(acc_t* __restrict acc, const scalar_t* __restrict x, acc_t a,
                                int64_t n) {
  for (int64_t d = 0; d < n; ++d) acc[d] += a * static_cast<acc_t>(x[d]);
}

// out[d] = a * acc[d]
template <typename acc_t, typename scalar_t>
C10_ALWAYS_INLINE void store_scaled_row(scalar_t* __restrict out, const acc_t* __restrict acc,
                                        acc_t a, int64_t n) {
  for (int64_t d = 0; d < n; ++d) out[d] = static_cast<scalar_t>(a * acc[d]);
}

template <typename scalar_t>
C10_ALWAYS_INLINE void zero_row(scalar_t* __restrict out, int64_t n) {
  for (int64_t d = 0; d < n; ++d) out[d] = static_cast<scalar_t>(0);
}

// The pooling denominator of docs/DESIGN.md §2.2: max(sum of weights, 1e-5).
template <typename acc_t>
C10_HOST_DEVICE C10_ALWAYS_INLINE acc_t safe_denominator(acc_t wsum) {
  return wsum > acc_t(1e-5) ? wsum : acc_t(1e-5);
}

// Per-unit weight normalisation of segment_pool: every weight of a unit is divided by the unit's
// largest weight wmax before it multiplies a row, and the denominator becomes
// max(sum w / wmax, 1e-5 / wmax) -- the same value, but no product w_t h_t overflows (1e30 weights
// on 1e30 rows) and the backward's per-(token, unit) factor (w_t / wmax) / den' is <= 1.
// wmax == 0 (all weights 0): factor 0, denominator 1e-5. Without weights wmax is 1.
template <typename acc_t>
C10_HOST_DEVICE C10_ALWAYS_INLINE acc_t unit_inv_denominator(acc_t wsum_normalised, acc_t wmax) {
  const acc_t eps = wmax > acc_t(0) ? acc_t(1e-5) / wmax : acc_t(1e-5);
  return acc_t(1) / (wsum_normalised > eps ? wsum_normalised : eps);
}

template <typename acc_t>
C10_HOST_DEVICE C10_ALWAYS_INLINE acc_t normalised_weight(acc_t w, acc_t wmax) {
  return wmax > acc_t(0) ? w / wmax : acc_t(0);
}

}  // namespace mta_ext
