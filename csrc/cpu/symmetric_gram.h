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

// Calls fn(i0, i1) for each block row [i0, i1) of an n x n matrix, in order.
template <typename Fn>
void for_each_block_row(int64_t n, Fn&& fn) {
  for (int64_t i0 = 0; i0 < n; i0 += kGramBlock) fn(i0, std::min(n, i0 + kGramBlock));
}

// Writes out[i0:i1, i0:n] = x[i0:i1] x[i0:n]ᵀ (block row [i0, i1) of the upper block triangle,
// its diagonal block whole) and returns that strip. x: [n, D]; out: [n, n], x's dtype.
inline at::Tensor gram_upper_strip(const at::Tensor& x, const at::Tensor& out, int64_t i0,
                                   int64_t i1) {
  const int64_t n = x.size(0);
  auto strip = out.slice(0, i0, i1).slice(1, i0, n);
  at::mm_out(strip, x.slice(0, i0, i1), x.slice(0, i0, n).t());
  return strip;
}

// Completes a matrix whose upper block triangle gram_upper_strip wrote: each block row's
// entries right of its diagonal block, transposed, below that block. A plain loop over 16 x 16
// tiles (about 5x faster than at::copy_ of the transposed view for n = 512, whose strided reads
// cost as much as the softmax that follows).
template <typename scalar_t>
void mirror_upper_blocks_typed(scalar_t* out, int64_t n) {
  constexpr int64_t kTile = 16;
  for_each_block_row(n, [&](int64_t i0, int64_t i1) {
    for (int64_t ti = i0; ti < i1; ti += kTile) {
      const int64_t te = std::min(i1, ti + kTile);
      for (int64_t tj = i1; tj < n; tj += kTile) {
        const int64_t je = std::min(n, tj + kTile);
        for (int64_t j = tj; j < je; ++j)
          for (int64_t i = ti; i < te; ++i) out[j * n + i] = out[i * n + j];
      }
    }
  });
}

// out: [n, n] contiguous, float or double (the CPU kernels' accumulation types).
inline void mirror_upper_blocks(const at::Tensor& out) {
  const int64_t n = out.size(0);
  TORCH_INTERNAL_ASSERT(out.is_contiguous() && out.dim() == 2 && out.size(1) == n);
  TORCH_INTERNAL_ASSERT(out.scalar_type() == at::kFloat || out.scalar_type() == at::kDouble);
  if (out.scalar_type() == at::kDouble)
    mirror_upper_blocks_typed(out.mutable_data_ptr<double>(), n);
  else
    mirror_upper_blocks_typed(out.mutable_data_ptr<float>(), n);
}

// x xᵀ ([n, n], x's dtype).
inline at::Tensor symmetric_gram(const at::Tensor& x) {
  auto out = at::empty({x.size(0), x.size(0)}, x.options());
  for_each_block_row(x.size(0), [&](int64_t i0, int64_t i1) { gram_upper_strip(x, out, i0, i1); });
  mirror_upper_blocks(out);
  return out;
}

// a aᵀ - b bᵀ ([n, n], a's dtype; a: [n, Da], b: [n, Db], same dtype), block row by block row:
// a's strip written in place, b's strip from its own product subtracted (not one fused
// accumulation, which leaves rounding residue): equal a and b give exactly 0.
inline at::Tensor symmetric_gram_difference(const at::Tensor& a, const at::Tensor& b) {
  const int64_t n = a.size(0);
  auto out = at::empty({n, n}, a.options());
  for_each_block_row(n, [&](int64_t i0, int64_t i1) {
    gram_upper_strip(a, out, i0, i1).sub_(at::mm(b.slice(0, i0, i1), b.slice(0, i0, n).t()));
  });
  mirror_upper_blocks(out);
  return out;
}

}  // namespace mta_ext
