// nvcuda::wmma for the SIMT backend: the shapes the kernels use (16x16x16, bf16/fp16 operands,
// fp32 accumulator). Every *_sync call is a warp collective (all 32 lanes must make it, as on
// the GPU); each lane then holds the WHOLE fragment (a GPU spreads it over the lanes in an
// unspecified layout, which the kernels never look into). mma_sync multiplies in fp32: the
// products of 16-bit inputs are exact there, and the sums run in k order with fp32 rounding. A
// tensor core's summation order and internal rounding are unspecified and may differ: the SIMT
// backend checks the data flow around the MMAs, not the tensor core's own arithmetic.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

namespace nvcuda::wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

namespace detail {
inline float to_float(const __nv_bfloat16& v) {
  return static_cast<float>(c10::BFloat16(v.x, c10::BFloat16::from_bits()));
}
inline float to_float(const __half& v) {
  return static_cast<float>(c10::Half(v.x, c10::Half::from_bits()));
}
inline float to_float(float v) { return v; }
// Every wmma call is warp-synchronous: all 32 lanes take part.
inline void warp_sync() { __syncwarp(0xffffffffu); }
}  // namespace detail

// Rows x cols of a fragment: a is M x K, b is K x N, the accumulator M x N.
template <typename Use, int M, int N, int K>
struct FragShape;
template <int M, int N, int K>
struct FragShape<matrix_a, M, N, K> {
  static constexpr int rows = M, cols = K;
};
template <int M, int N, int K>
struct FragShape<matrix_b, M, N, K> {
  static constexpr int rows = K, cols = N;
};
template <int M, int N, int K>
struct FragShape<accumulator, M, N, K> {
  static constexpr int rows = M, cols = N;
};

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static_assert(M == 16 && N == 16 && K == 16, "the SIMT wmma implements 16x16x16 only");
  using S = FragShape<Use, M, N, K>;
  static constexpr int rows = S::rows, cols = S::cols;
  static constexpr int num_elements = rows * cols;
  float v[rows][cols];  // the whole fragment, in fp32 (exact for 16-bit operands)
};

template <typename Use, int M, int N, int K, typename T, typename Layout>
inline void fill_fragment(fragment<Use, M, N, K, T, Layout>& f, float value) {
  detail::warp_sync();
  for (auto& r : f.v)
    for (auto& x : r) x = value;
}

// Operand fragments: element (r, c) at p[r * ldm + c] (row_major) or p[c * ldm + r] (col_major).
template <typename Use, int M, int N, int K, typename T, typename Layout, typename P>
inline void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const P* p, unsigned ldm) {
  static_assert(std::is_same_v<Layout, row_major> || std::is_same_v<Layout, col_major>,
                "operand fragments need a layout");
  detail::warp_sync();
  using F = fragment<Use, M, N, K, T, Layout>;
  for (int r = 0; r < F::rows; ++r)
    for (int c = 0; c < F::cols; ++c) {
      const P& x =
          std::is_same_v<Layout, row_major> ? p[size_t(r) * ldm + c] : p[size_t(c) * ldm + r];
      f.v[r][c] = detail::to_float(x);
    }
}

template <int M, int N, int K>
inline void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, float>& f,
                              unsigned ldm, layout_t layout) {
  detail::warp_sync();
  for (int r = 0; r < M; ++r)
    for (int c = 0; c < N; ++c)
      (layout == mem_row_major ? p[size_t(r) * ldm + c] : p[size_t(c) * ldm + r]) = f.v[r][c];
  detail::warp_sync();  // every lane stored the same tile: none runs ahead of the others' writes
}

template <int M, int N, int K, typename TA, typename LA, typename TB, typename LB>
inline void mma_sync(fragment<accumulator, M, N, K, float>& d,
                     const fragment<matrix_a, M, N, K, TA, LA>& a,
                     const fragment<matrix_b, M, N, K, TB, LB>& b,
                     const fragment<accumulator, M, N, K, float>& c) {
  detail::warp_sync();
  float out[M][N];
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      float s = c.v[i][j];
      for (int k = 0; k < K; ++k) s += a.v[i][k] * b.v[k][j];
      out[i][j] = s;
    }
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) d.v[i][j] = out[i][j];
}

}  // namespace nvcuda::wmma
