// The Gram matrix x xᵀ of a few hundred rows, built from its upper block triangle: one product per
// block row (rows [i0, i0 + block) against rows [i0, n)), then each block row's part right of
// its diagonal block copied, transposed, below it. About (1 + block / n) / 2 of the full product's
// FLOPs; used by the CPU kernels' per-example Grams (token_salience's S, relational_loss's cosine
// Grams). Entries outside the diagonal blocks are symmetric by construction, and two calls on
// equal inputs give equal bits (the blocking depends on n only), which relational_loss needs:
// equal student and teacher rows must give a Gram difference of exactly 0.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>

namespace mta_ext {

// Rows per block. 64 measured best against 32, 48, 96 and 128 on 2-core AVX-512 VMs (one MKL
// thread per product) for n = 150-512 and D = 768-1600: smaller blocks save FLOPs but run the
// products slower.
constexpr int64_t kGramBlock = 64;

// out[i0:i1, i0:n] = x[i0:i1] x[i0:n]ᵀ for every block row: the upper block triangle (diagonal
// blocks whole). The entries left of each diagonal block are not written.
// x: [n, D]; out: [n, n], contiguous, x's dtype.
inline void gram_upper_blocks(const at::Tensor& x, const at::Tensor& out) {
  const int64_t n = x.size(0);
  for (int64_t i0 = 0; i0 < n; i0 += kGramBlock) {
    const int64_t i1 = std::min(n, i0 + kGramBlock);
    auto strip = out.slice(0, i0, i1).slice(1, i0, n);
    at::mm_out(strip, x.slice(0, i0, i1), x.slice(0, i0, n).t());
  }
}

// Completes a matrix whose upper block triangle gram_upper_blocks wrote: each block row's
// entries right of its diagonal block, transposed, below that block.
inline void mirror_upper_blocks(const at::Tensor& out) {
  const int64_t n = out.size(0);
  for (int64_t i0 = 0; i0 < n; i0 += kGramBlock) {
    const int64_t i1 = std::min(n, i0 + kGramBlock);
    if (i1 < n)
      out.slice(0, i1, n).slice(1, i0, i1).copy_(out.slice(0, i0, i1).slice(1, i1, n).t());
  }
}

// x xᵀ ([n, n], x's dtype).
inline at::Tensor symmetric_gram(const at::Tensor& x) {
  auto out = at::empty({x.size(0), x.size(0)}, x.options());
  gram_upper_blocks(x, out);
  mirror_upper_blocks(out);
  return out;
}

// a aᵀ - b bᵀ ([n, n], a's dtype; a: [n, Da], b: [n, Db], same dtype), from two separate products
// (not one fused accumulation, which leaves rounding residue): equal a and b give exactly 0.
inline at::Tensor symmetric_gram_difference(const at::Tensor& a, const at::Tensor& b) {
  const int64_t n = a.size(0);
  auto out = at::empty({n, n}, a.options()), other = at::empty({n, n}, a.options());
  gram_upper_blocks(a, out);
  gram_upper_blocks(b, other);
  for (int64_t i0 = 0; i0 < n; i0 += kGramBlock) {
    const int64_t i1 = std::min(n, i0 + kGramBlock);
    out.slice(0, i0, i1).slice(1, i0, n).sub_(other.slice(0, i0, i1).slice(1, i0, n));
  }
  mirror_upper_blocks(out);
  return out;
}

}  // namespace mta_ext
