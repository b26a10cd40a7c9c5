// relational_loss CUDA device code, part 1: per-unit norms and the Gram tiles (tensor cores
// for bf16/fp16, CUDA cores otherwise) with the loss / E / radial partials of each 64x64 tile.
// Included by cuda/relational_loss_cuda.cu only (see the overview there).
#pragma once

#include "common/cuda_utils.cuh"
#include "common/simt_tile.cuh"
#include "ops/relational_loss.h"
#include "ops/relational_loss_plan.h"

#include <ATen/ATen.h>

#include <cstdint>
#include <limits>
#include <type_traits>

namespace mta_ext::relational_cuda {

using cuda::ceil_div;
namespace simt = cuda::simt;

constexpr int kTile = simt::kTile;        // 64
constexpr int kThreads = simt::kThreads;  // 256
constexpr int kGsLd = kTile + 4;          // fp32 Gram tile row stride (WMMA store: multiple of 4)
constexpr int kOpLd = 32 + 8;             // 16-bit operand row stride (WMMA load: multiple of 8)
constexpr int kPlanCols = plan::kCols;
// Plan row columns (ops/relational_loss_plan.h).
using plan::kA, plan::kN, plan::kTi, plan::kTj, plan::kMoff, plan::kRoff, plan::kTb;

template <typename T>
struct is_half16
    : std::bool_constant<std::is_same_v<T, c10::Half> || std::is_same_v<T, c10::BFloat16>> {};

template <typename T>
struct MmaType;
template <>
struct MmaType<c10::BFloat16> {
  using type = __nv_bfloat16;
};
template <>
struct MmaType<c10::Half> {
  using type = __half;
};

// ---------------------------------------------------------------- row preparation

// Whether row_prep_kernel rescales the rows (fp32/bf16/fp64) or only measures them (fp16).
enum class RowScale : bool { kMeasureOnly = false, kPowerOfTwo = true };

// One warp per unit row u_i (N rows of D, compute dtype scalar_t), in one pass over the row:
//   kPowerOfTwo: e_i with max|u_i| 2^-e_i in [0.5, 1) (e_i = 0 for a zero or non-finite row;
//     e_i >= min_exponent + 25 so that 2^-e_i is finite), the scaled row u'_i = 2^-e_i u_i written
//     to `scaled` (exact: powers of two, except elements ~2^126 below the row's maximum, which
//     underflow) and its scale sc_i = 2^-e_i. Cosines are scale invariant, so the Gram kernels
//     then never overflow (|u| > ~1.8e19 in fp32/bf16) nor underflow (|u| < ~1e-19).
//   kMeasureOnly (fp16: |u| <= 65504, whose squares and products can neither overflow nor
//     underflow in fp32, and scaling could push small elements into subnormals): no copy.
// Then the norm of the row the Gram kernels read: nrm_i = max(|u'_i|, eps sc_i) (the clamp
// max(|u_i|, eps) of the original row) and r_i = 1 / nrm_i.
template <typename scalar_t, typename acc_t, RowScale kScale>
__global__ void __launch_bounds__(256)
    row_prep_kernel(const scalar_t* __restrict__ u, int64_t N, int64_t D,
                    scalar_t* __restrict__ scaled, acc_t* __restrict__ sc_out,
                    acc_t* __restrict__ r, acc_t* __restrict__ nrm) {
  const int64_t row = int64_t(blockIdx.x) * 8 + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= N) return;  // the whole warp leaves together
  const scalar_t* x = u + row * D;
  acc_t sc = 1;
  if constexpr (kScale == RowScale::kPowerOfTwo) {
    acc_t amax = 0;
    for (int64_t d = lane; d < D; d += 32) amax = max(amax, abs(static_cast<acc_t>(x[d])));
    amax = cuda::warp_max(amax);
    int e = 0;
    if (amax > acc_t(0) && isfinite(amax)) frexp(amax, &e);
    e = max(e, std::numeric_limits<acc_t>::min_exponent + 25);
    sc = ldexp(acc_t(1), -e);  // exact in every precision: no exponent passes through fp32
  }
  acc_t s = 0;
  for (int64_t d = lane; d < D; d += 32) {
    acc_t v = static_cast<acc_t>(x[d]);
    if constexpr (kScale == RowScale::kPowerOfTwo) {
      const scalar_t y = static_cast<scalar_t>(v * sc);
      scaled[row * D + d] = y;
      v = static_cast<acc_t>(y);  // the norm of the row the Gram kernels will read
    }
    s += v * v;
  }
  s = cuda::warp_sum(s);
  if (lane == 0) {
    const acc_t nr = max(sqrt(s), acc_t(kCosEps) * sc);
    nrm[row] = nr;
    r[row] = acc_t(1) / nr;
    if constexpr (kScale == RowScale::kPowerOfTwo) sc_out[row] = sc;
  }
}

// One block: the weights divided by their maximum c (1 if every weight is 0), and the
// denominator's clamp 1e-5 / c^2 in double (the loss is otherwise invariant): no W_i W_j
// overflows (1e30 weights) or underflows, and eps / c^2 may exceed the fp32 range.
template <typename acc_t>
__global__ void __launch_bounds__(256)
    weight_prep_kernel(const acc_t* __restrict__ w, int64_t N, acc_t* __restrict__ w_out,
                       double* __restrict__ eps_out) {
  __shared__ acc_t wred[8];
  __shared__ acc_t c_shared;
  acc_t m = 0;
  for (int64_t k = threadIdx.x; k < N; k += 256) m = max(m, w[k]);
  m = cuda::warp_max(m);
  if (threadIdx.x % 32 == 0) wred[threadIdx.x / 32] = m;
  __syncthreads();
  if (threadIdx.x == 0) {
    acc_t c = 0;
    for (int q = 0; q < 8; ++q) c = max(c, wred[q]);
    c = c > acc_t(0) ? c : acc_t(1);
    c_shared = c;
    eps_out[0] = kWeightSumEps / double(c) / double(c);
  }
  __syncthreads();
  const acc_t c = c_shared;
  for (int64_t k = threadIdx.x; k < N; k += 256) w_out[k] = w[k] / c;
}

// ---------------------------------------------------------------- Gram tiles

// (r, k) -> U[(row0 + r) * D + k] for r < rows, k < D, else 0.
template <typename scalar_t, typename acc_t>
struct UnitRows {
  const scalar_t* u;
  int64_t D, row0;
  int rows;
  __device__ __forceinline__ acc_t operator()(int r, int64_t k) const {
    return (r < rows && k < D) ? static_cast<acc_t>(u[(row0 + r) * D + k]) : acc_t(0);
  }
};

// CUDA-core Gram tile: acc[i][j] = u_{rowA + ty + 16i} . u_{rowB + tx + 16j}.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void gram_simt(acc_t (&acc)[4][4], const scalar_t* u, int64_t D,
                                          int64_t rowA, int nA, int64_t rowB, int nB,
                                          simt::Stage<acc_t>& st) {
  simt::zero(acc);
  const UnitRows<scalar_t, acc_t> la{u, D, rowA, nA}, lb{u, D, rowB, nB};
  simt::gemm_nt<acc_t, simt::Contig::K, simt::Contig::K>(acc, D, la, lb, st);
}

// How the 16-bit operands are staged: one 16-byte load of 8 elements (rows 16-byte aligned and
// D % 8 == 0), or element by element.
enum class RowLoad : bool { kScalar = false, kVec16 = true };

// Stage 8 consecutive 16-bit elements (row, d .. d+8) into shared memory, zeros outside.
template <RowLoad kLoad>
__device__ __forceinline__ void stage8(uint16_t* dst, const uint16_t* __restrict__ u, int64_t D,
                                       int64_t row, bool row_ok, int64_t d) {
  if constexpr (kLoad == RowLoad::kVec16) {  // all 8 in or all 8 out
    uint4 v = make_uint4(0, 0, 0, 0);
    if (row_ok && d < D) v = *reinterpret_cast<const uint4*>(u + row * D + d);
    *reinterpret_cast<uint4*>(dst) = v;
  } else {
#pragma unroll
    for (int q = 0; q < 8; ++q) dst[q] = (row_ok && d + q < D) ? u[row * D + d + q] : uint16_t(0);
  }
}

// Tensor-core Gram tile (bf16/fp16 in, fp32 accumulate) into gs[64][kGsLd]. 8 warps: warp w owns
// the 16x16 fragments (w % 4, 2 (w / 4)) and (w % 4, 2 (w / 4) + 1). D is walked in chunks of
// 32 staged in shared memory (ops: 2 x 64 x kOpLd 16-bit). Built for sm_80+; older targets take
// the CUDA-core path and write the same tile.
template <typename scalar_t, RowLoad kLoad>
__device__ __forceinline__ void gram_wmma(float (*gs)[kGsLd], const scalar_t* u, int64_t D,
                                          int64_t rowA, int nA, int64_t rowB, int nB,
                                          uint16_t* ops) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  float acc[4][4];
  gram_simt<scalar_t, float>(acc, u, D, rowA, nA, rowB, nB,
                             *reinterpret_cast<simt::Stage<float>*>(ops));
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) gs[ty + 16 * i][tx + 16 * j] = acc[i][j];
#else
  using namespace nvcuda;
  using mma_t = typename MmaType<scalar_t>::type;
  const uint16_t* u16 = reinterpret_cast<const uint16_t*>(u);
  uint16_t* As = ops;
  uint16_t* Bs = ops + kTile * kOpLd;
  const int tid = threadIdx.x, warp = tid / 32;
  const int fr = warp % 4, fc = (warp / 4) * 2;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> c0, c1;
  wmma::fill_fragment(c0, 0.0f);
  wmma::fill_fragment(c1, 0.0f);
  const int sr = tid / 4, sc = (tid % 4) * 8;  // this thread stages row sr, columns sc..sc+8
  for (int64_t d0 = 0; d0 < D; d0 += 32) {
    stage8<kLoad>(As + sr * kOpLd + sc, u16, D, rowA + sr, sr < nA, d0 + sc);
    stage8<kLoad>(Bs + sr * kOpLd + sc, u16, D, rowB + sr, sr < nB, d0 + sc);
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < 32; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, mma_t, wmma::row_major> fa;
      wmma::fragment<wmma::matrix_b, 16, 16, 16, mma_t, wmma::col_major> fb;
      wmma::load_matrix_sync(fa, reinterpret_cast<const mma_t*>(As + fr * 16 * kOpLd + kk), kOpLd);
      wmma::load_matrix_sync(fb, reinterpret_cast<const mma_t*>(Bs + fc * 16 * kOpLd + kk), kOpLd);
      wmma::mma_sync(c0, fa, fb, c0);
      wmma::load_matrix_sync(fb, reinterpret_cast<const mma_t*>(Bs + (fc + 1) * 16 * kOpLd + kk),
                             kOpLd);
      wmma::mma_sync(c1, fa, fb, c1);
    }
    __syncthreads();
  }
  wmma::store_matrix_sync(&gs[fr * 16][fc * 16], c0, kGsLd, wmma::mem_row_major);
  wmma::store_matrix_sync(&gs[fr * 16][(fc + 1) * 16], c1, kGsLd, wmma::mem_row_major);
#endif
}

// Where the Gram tiles of tile_kernel are computed.
enum class GramMma : bool { kCudaCores = false, kTensorCores = true };  // tensor: 16-bit, sm_80+

template <typename scalar_t, typename acc_t, GramMma kMma>
struct TileSmem {
  static constexpr bool kWmma = kMma == GramMma::kTensorCores;
  static constexpr size_t kGram = kWmma ? 2 * kTile * kGsLd * sizeof(float) : 0;
  static constexpr size_t kOps = kWmma ? 2 * kTile * kOpLd * sizeof(uint16_t) : 0;
  static constexpr size_t kStage = sizeof(simt::Stage<acc_t>);
  static constexpr size_t kRed = 16 * kTile * sizeof(acc_t);
  static constexpr size_t kBytes =
      kWmma ? kGram + (kOps > kStage ? kOps : kStage) : (kStage > kRed ? kStage : kRed);
  static_assert(kBytes <= 48 * 1024, "static shared memory limit");
  static_assert(!kWmma || kRed <= kGram, "the reduction buffer aliases the Gram tiles");
};

// Deterministic block sum (256 threads): fixed warp tree, then warps in order.
template <typename acc_t>
__device__ __forceinline__ acc_t block_sum(acc_t v, acc_t* wred /*[8]*/) {
  v = cuda::warp_sum(v);
  if (threadIdx.x % 32 == 0) wred[threadIdx.x / 32] = v;
  __syncthreads();
  acc_t s = 0;
  if (threadIdx.x == 0)
    for (int q = 0; q < kThreads / 32; ++q) s += wred[q];
  return s;  // valid in thread 0
}

// What a tile_kernel launch computes: the loss partials, the gradient inputs, or both.
enum TileMode { kLoss = 0, kGrad = 1, kLossAndGrad = 2 };

// The tile kernel's arguments (one struct instead of a dozen pointers).
template <typename scalar_t, typename acc_t>
struct TileParams {
  const scalar_t* us;  // [N, Ds] student units (rows scaled by powers of two: row_prep_kernel)
  const scalar_t* ut;  // [N, Dt] teacher units
  int64_t Ds, Dt;
  const acc_t* w;       // [N] unit weights / their maximum
  const acc_t* rs;      // [N] 1 / max(|u_s|, eps) per unit
  const acc_t* rt;      // [N] 1 / max(|u_t|, eps)
  const int64_t* plan;  // [ntiles, kPlanCols] tile plan
  acc_t* partial;       // [ntiles] loss partials (kLoss, kLossAndGrad)
  acc_t* E;             // [gram_size] W_i W_j (cS - cT) blocks (kGrad, kLossAndGrad)
  acc_t* radS;          // [radial_size] radial partials, student and teacher
  acc_t* radT;
};

// One 64x64 tile (ti, tj) of one example. Loss (kLoss, kLossAndGrad): partial[tile] =
// (ti < tj ? 2 : 1) * sum_{i!=j} W_i W_j (cS_ij - cT_ij)^2. Gradient (kGrad, kLossAndGrad): E
// entries of the tile (and its mirror) and the radial partials sum_j E_ij c_ij of its rows (slot
// tj) and, off the diagonal, of its columns (slot ti).
template <typename scalar_t, typename acc_t, GramMma kMma, TileMode kMode, RowLoad kLoad>
__global__ void __launch_bounds__(kThreads) tile_kernel(const TileParams<scalar_t, acc_t> P) {
  using Smem = TileSmem<scalar_t, acc_t, kMma>;
  __shared__ __align__(128) unsigned char smem[Smem::kBytes];
  __shared__ acc_t wred[kThreads / 32];
  const int64_t* p = P.plan + int64_t(blockIdx.x) * kPlanCols;
  const int64_t a = p[kA], n = p[kN], ti = p[kTi], tj = p[kTj];
  const int64_t rowA = a + ti * kTile, rowB = a + tj * kTile;
  const int nA = int(n - ti * kTile < kTile ? n - ti * kTile : kTile);
  const int nB = int(n - tj * kTile < kTile ? n - tj * kTile : kTile);
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;

  // Raw Gram entries of this thread's 4x4 elements (rows ty + 16 i, columns tx + 16 j).
  acc_t gS[4][4], gT[4][4];
  if constexpr (kMma == GramMma::kTensorCores) {
    auto* gsS = reinterpret_cast<float (*)[kGsLd]>(smem);
    auto* gsT = reinterpret_cast<float (*)[kGsLd]>(smem + kTile * kGsLd * sizeof(float));
    auto* ops = reinterpret_cast<uint16_t*>(smem + Smem::kGram);
    gram_wmma<scalar_t, kLoad>(gsS, P.us, P.Ds, rowA, nA, rowB, nB, ops);
    gram_wmma<scalar_t, kLoad>(gsT, P.ut, P.Dt, rowA, nA, rowB, nB, ops);
    __syncthreads();
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        gS[i][j] = gsS[ty + 16 * i][tx + 16 * j];
        gT[i][j] = gsT[ty + 16 * i][tx + 16 * j];
      }
  } else {
    auto& st = *reinterpret_cast<simt::Stage<acc_t>*>(smem);
    gram_simt<scalar_t, acc_t>(gS, P.us, P.Ds, rowA, nA, rowB, nB, st);
    gram_simt<scalar_t, acc_t>(gT, P.ut, P.Dt, rowA, nA, rowB, nB, st);
  }
  __syncthreads();  // smem is reused below

  acc_t wi[4], rsi[4], rti[4], wj[4], rsj[4], rtj[4];
  bool vi[4], vj[4];
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    vi[q] = ty + 16 * q < nA;
    vj[q] = tx + 16 * q < nB;
    const int64_t gi = rowA + ty + 16 * q, gj = rowB + tx + 16 * q;
    wi[q] = vi[q] ? P.w[gi] : acc_t(0);
    rsi[q] = vi[q] ? P.rs[gi] : acc_t(0);
    rti[q] = vi[q] ? P.rt[gi] : acc_t(0);
    wj[q] = vj[q] ? P.w[gj] : acc_t(0);
    rsj[q] = vj[q] ? P.rs[gj] : acc_t(0);
    rtj[q] = vj[q] ? P.rt[gj] : acc_t(0);
  }
  const bool diag = ti == tj;

  if constexpr (kMode != kGrad) {
    acc_t sum = 0;
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const bool ok = vi[i] && vj[j] && !(diag && ty + 16 * i == tx + 16 * j);
        // Uncontracted products (cuda::mul_rn): equal student and teacher inputs give exactly
        // d = 0, as on the CPU (an FMA would leave ~1e-15 of rounding in one of the two).
        const acc_t d = cuda::mul_rn(cuda::mul_rn(gS[i][j], rsi[i]), rsj[j]) -
                        cuda::mul_rn(cuda::mul_rn(gT[i][j], rti[i]), rtj[j]);
        sum += ok ? wi[i] * wj[j] * d * d : acc_t(0);
      }
    sum = block_sum(sum, wred);
    if (threadIdx.x == 0) P.partial[blockIdx.x] = diag ? sum : acc_t(2) * sum;
  }
  if constexpr (kMode != kLoss) {
    // P.E' = W_i W_j (cS - cT): the scale k = 4 g / Z is applied per output row in double by
    // grad_rows_kernel (k can lie below the type's range when the weights are tiny).
    const int64_t moff = p[kMoff], roff = p[kRoff], Tb = p[kTb];
    const int64_t li0 = ti * kTile, lj0 = tj * kTile;  // local unit indices in the example
    acc_t rowS[4], rowT[4], colS[4], colT[4];
#pragma unroll
    for (int q = 0; q < 4; ++q) rowS[q] = rowT[q] = colS[q] = colT[q] = acc_t(0);
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int64_t li = li0 + ty + 16 * i, lj = lj0 + tx + 16 * j;
        const bool ok = vi[i] && vj[j] && li != lj;
        const acc_t cS = cuda::mul_rn(cuda::mul_rn(gS[i][j], rsi[i]), rsj[j]);
        const acc_t cT = cuda::mul_rn(cuda::mul_rn(gT[i][j], rti[i]), rtj[j]);
        const acc_t e = ok ? wi[i] * wj[j] * (cS - cT) : acc_t(0);
        if (vi[i] && vj[j]) {
          P.E[moff + li * n + lj] = e;
          if (!diag) P.E[moff + lj * n + li] = e;
        }
        rowS[i] += e * cS;
        rowT[i] += e * cT;
        colS[j] += e * cS;
        colT[j] += e * cT;
      }
    // Row partials: the 16 lanes tx of one ty share rows.
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const acc_t s = cuda::warp_sum(rowS[i], 16), t = cuda::warp_sum(rowT[i], 16);
      if (tx == 0 && vi[i]) {
        P.radS[roff + (li0 + ty + 16 * i) * Tb + tj] = s;
        P.radT[roff + (li0 + ty + 16 * i) * Tb + tj] = t;
      }
    }
    if (!diag) {  // column partials (rows of tile tj, slot ti), reduced over ty in order
      auto* red = reinterpret_cast<acc_t(*)[kTile]>(smem);
      for (int side = 0; side < 2; ++side) {
#pragma unroll
        for (int j = 0; j < 4; ++j) red[ty][tx + 16 * j] = side == 0 ? colS[j] : colT[j];
        __syncthreads();
        if (threadIdx.x < kTile && threadIdx.x < nB) {
          acc_t s = 0;
#pragma unroll
          for (int y = 0; y < 16; ++y) s += red[y][threadIdx.x];
          (side == 0 ? P.radS : P.radT)[roff + (lj0 + threadIdx.x) * Tb + ti] = s;
        }
        __syncthreads();
      }
    }
  }
}

}  // namespace mta_ext::relational_cuda
