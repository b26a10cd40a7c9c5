// relational_loss (DSA): CUDA kernels, forward and backward; schema, checks and CPU kernels in
// relational_loss.cpp.
//
// loss = sum_b sum_{i!=j in b} W_i W_j (cS_ij - cT_ij)^2 / max(sum_b sum_{i!=j in b} W_i W_j, 1e-5)
//
// Work is cut into 64x64 tiles of each example's N_b x N_b Gram matrices; only the upper
// triangle (ti <= tj) is visited and off-diagonal tiles count twice. All tiles of all examples
// go into ONE launch (grid over a host-built tile list), so many small examples cost one launch.
//   norms:    1 / max(|u_k|, 1e-12) per unit and side (a warp per row), so rows are normalised
//             once and c_ij = (u_i . u_j) r_i r_j.
//   tile fwd: raw Gram tiles of both sides (bf16/fp16: tensor cores via WMMA, fp32 accumulate,
//             the products of 16-bit inputs are exact in fp32; fp32/fp64: CUDA cores in the
//             input precision, no tf32), then the weighted squared difference reduced in the
//             block -> one partial per tile.
//   finalize: one block sums the tile partials and the pair-weight denominator in a fixed order.
// Backward keeps only E = W_i W_j (cS - cT) (zero diagonal; N_b x N_b per example; the scale
// k = 4 g / Z is applied per output row, in double) and
// per-(row, tile) partials of sum_j E_ij c_ij (the radial term of the normalisation backward),
// then a second kernel computes G_i = sum_j E_ij r_j u_j (64 rows x 64 columns per block) and
// g_i = r_i (G_i - u_i r_i sum_j E_ij c_ij). No float atomics anywhere: every value has one
// writer and fixed summation orders, so results are bit-identical across runs.
#include "ops/relational_loss.h"

#include "common/no_autocast.h"
#include "common/checks.h"
#include "common/cuda_utils.cuh"
#include "common/simt_tile.cuh"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <limits>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

namespace mta_ext {
namespace {

using cuda::ceil_div;
namespace simt = cuda::simt;

constexpr const char* kFwd = "relational_loss";
constexpr const char* kBwd = "relational_loss_backward";
constexpr const char* kFwdGrad = "relational_loss_and_grad";
constexpr int kTile = simt::kTile;        // 64
constexpr int kThreads = simt::kThreads;  // 256
constexpr int kGsLd = kTile + 4;          // fp32 Gram tile row stride (WMMA store: multiple of 4)
constexpr int kOpLd = 32 + 8;             // 16-bit operand row stride (WMMA load: multiple of 8)
constexpr int kPlanCols = 8;

// Tile plan row: a (first unit), n (units of the example), ti, tj, moff (offset of the example's
// n x n block in E), roff (offset of its n x Tb radial partials), Tb (= ceil(n / 64)).
enum PlanCol { kA = 0, kN, kTi, kTj, kMoff, kRoff, kTb };

template <typename T>
struct is_half16 : std::bool_constant<std::is_same_v<T, c10::Half> || std::is_same_v<T, c10::BFloat16>> {};

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

// ---------------------------------------------------------------- norms

// Rows arrive scaled by a power of two sc_i (see pow2_rows; sc == nullptr: unscaled), so the
// norm clamp max(|u_i|, eps) of the original row is max(|u'_i|, eps sc_i) of the scaled one.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(256)
    norms_kernel(const scalar_t* __restrict__ u, int64_t N, int64_t D,
                 const acc_t* __restrict__ sc, acc_t* __restrict__ r, acc_t* __restrict__ nrm) {
  const int64_t row = int64_t(blockIdx.x) * 8 + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= N) return;
  const scalar_t* x = u + row * D;
  acc_t s = 0;
  for (int64_t d = lane; d < D; d += 32) {
    const acc_t v = static_cast<acc_t>(x[d]);
    s += v * v;
  }
  s = cuda::warp_sum(s);
  if (lane == 0) {
    const acc_t eps = sc ? acc_t(kCosEps) * sc[row] : acc_t(kCosEps);
    const acc_t nr = max(sqrt(s), eps);
    nrm[row] = nr;
    r[row] = acc_t(1) / nr;
  }
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

// Stage 8 consecutive 16-bit elements (row, d .. d+8) into shared memory, zeros outside.
template <bool kVec>
__device__ __forceinline__ void stage8(uint16_t* dst, const uint16_t* __restrict__ u, int64_t D,
                                       int64_t row, bool row_ok, int64_t d) {
  if constexpr (kVec) {  // rows 16-byte aligned and D % 8 == 0: all 8 in or all 8 out
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
template <typename scalar_t, bool kVec>
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
    stage8<kVec>(As + sr * kOpLd + sc, u16, D, rowA + sr, sr < nA, d0 + sc);
    stage8<kVec>(Bs + sr * kOpLd + sc, u16, D, rowB + sr, sr < nB, d0 + sc);
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

template <typename scalar_t, typename acc_t, bool kWmma>
struct TileSmem {
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

// One 64x64 tile (ti, tj) of one example. Loss (kMode 0 and 2): partial[tile] = (ti < tj ? 2 : 1)
// * sum_{i!=j} W_i W_j (cS_ij - cT_ij)^2. Gradient (kMode 1 and 2): E entries of the tile (and
// its mirror) and the radial partials sum_j E_ij c_ij of its rows (slot tj) and, off the
// diagonal, of its columns (slot ti).
enum TileMode { kLoss = 0, kGrad = 1, kLossAndGrad = 2 };

template <typename scalar_t, typename acc_t, bool kWmma, int kMode, bool kVec>
__global__ void __launch_bounds__(kThreads)
    tile_kernel(const scalar_t* __restrict__ us, const scalar_t* __restrict__ ut, int64_t Ds,
                int64_t Dt, const acc_t* __restrict__ w, const acc_t* __restrict__ rs,
                const acc_t* __restrict__ rt, const int64_t* __restrict__ plan,
                acc_t* __restrict__ partial, const acc_t* __restrict__ scale_p,
                acc_t* __restrict__ E, acc_t* __restrict__ radS, acc_t* __restrict__ radT) {
  using Smem = TileSmem<scalar_t, acc_t, kWmma>;
  __shared__ __align__(128) unsigned char smem[Smem::kBytes];
  __shared__ acc_t wred[kThreads / 32];
  const int64_t* p = plan + int64_t(blockIdx.x) * kPlanCols;
  const int64_t a = p[kA], n = p[kN], ti = p[kTi], tj = p[kTj];
  const int64_t rowA = a + ti * kTile, rowB = a + tj * kTile;
  const int nA = int(n - ti * kTile < kTile ? n - ti * kTile : kTile);
  const int nB = int(n - tj * kTile < kTile ? n - tj * kTile : kTile);
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;

  // Raw Gram entries of this thread's 4x4 elements (rows ty + 16 i, columns tx + 16 j).
  acc_t gS[4][4], gT[4][4];
  if constexpr (kWmma) {
    auto* gsS = reinterpret_cast<float(*)[kGsLd]>(smem);
    auto* gsT = reinterpret_cast<float(*)[kGsLd]>(smem + kTile * kGsLd * sizeof(float));
    auto* ops = reinterpret_cast<uint16_t*>(smem + Smem::kGram);
    gram_wmma<scalar_t, kVec>(gsS, us, Ds, rowA, nA, rowB, nB, ops);
    gram_wmma<scalar_t, kVec>(gsT, ut, Dt, rowA, nA, rowB, nB, ops);
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
    gram_simt<scalar_t, acc_t>(gS, us, Ds, rowA, nA, rowB, nB, st);
    gram_simt<scalar_t, acc_t>(gT, ut, Dt, rowA, nA, rowB, nB, st);
  }
  __syncthreads();  // smem is reused below

  acc_t wi[4], rsi[4], rti[4], wj[4], rsj[4], rtj[4];
  bool vi[4], vj[4];
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    vi[q] = ty + 16 * q < nA;
    vj[q] = tx + 16 * q < nB;
    const int64_t gi = rowA + ty + 16 * q, gj = rowB + tx + 16 * q;
    wi[q] = vi[q] ? w[gi] : acc_t(0);
    rsi[q] = vi[q] ? rs[gi] : acc_t(0);
    rti[q] = vi[q] ? rt[gi] : acc_t(0);
    wj[q] = vj[q] ? w[gj] : acc_t(0);
    rsj[q] = vj[q] ? rs[gj] : acc_t(0);
    rtj[q] = vj[q] ? rt[gj] : acc_t(0);
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
    if (threadIdx.x == 0) partial[blockIdx.x] = diag ? sum : acc_t(2) * sum;
  }
  if constexpr (kMode != kLoss) {
    // E' = W_i W_j (cS - cT): the scale k = 4 g / Z is applied per output row in double by
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
          E[moff + li * n + lj] = e;
          if (!diag) E[moff + lj * n + li] = e;
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
        radS[roff + (li0 + ty + 16 * i) * Tb + tj] = s;
        radT[roff + (li0 + ty + 16 * i) * Tb + tj] = t;
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
          (side == 0 ? radS : radT)[roff + (lj0 + threadIdx.x) * Tb + ti] = s;
        }
        __syncthreads();
      }
    }
  }
}

// ---------------------------------------------------------------- finalize

// One block: out = num / max(den, eps) (forward) or grad * 4 / max(den, eps) (the backward
// scale), num = sum of tile partials, den = sum_b 2 sum_{j in b} W_j (sum_{i<j in b} W_i) over
// examples with n_b >= 2 (non-negative terms only: no cancellation), W divided by its maximum c
// and eps = 1e-5 / c^2 (eps_p, on the device: see prepare).
template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
    finalize_kernel(const acc_t* __restrict__ partial, int64_t ntiles, const acc_t* __restrict__ w,
                    const int64_t* __restrict__ cu, int64_t B, const double* __restrict__ eps_p,
                    const acc_t* __restrict__ grad, acc_t* __restrict__ out,
                    double* __restrict__ k_out) {
  __shared__ acc_t wred[kThreads / 32];
  acc_t num = 0, den = 0;
  for (int64_t t = threadIdx.x; t < ntiles; t += kThreads) num += partial[t];
  for (int64_t b = threadIdx.x; b < B; b += kThreads) {
    const int64_t s = cu[b], e = cu[b + 1];
    if (e - s < 2) continue;
    acc_t prefix = 0, pw = 0;
    for (int64_t k = s; k < e; ++k) {
      pw += w[k] * prefix;
      prefix += w[k];
    }
    den += acc_t(2) * pw;
  }
  num = block_sum(num, wred);
  __syncthreads();
  den = block_sum(den, wred);
  if (threadIdx.x == 0) {
    // In double: eps / c^2 may exceed fp32 when the weights are tiny.
    const double d = max(double(den), eps_p[0]);
    if (grad)
      k_out[0] = double(grad[0]) * 4.0 / d;
    else
      out[0] = static_cast<acc_t>(double(num) / d);
  }
}

// ---------------------------------------------------------------- backward rows

constexpr int kBLd = kTile + 8;  // row stride of the staged U tile (WMMA: multiple of 8)

// Tensor-core G tile for bf16 units: acc[i][j] = sum_j' E_ij' r_j' u_j'[d] for this thread's
// elements (rows ty + 16 i, columns d0 + tx + 16 j). E' = E r (fp32) is split into bf16
// hi + lo (E' - hi), two MMAs per step: ~fp32 accuracy with the exact bf16 u as the other
// operand, fp32 accumulation. Shared memory (bytes): A hi/lo 2 x 64 x kOpLd x 2, B 32 x kBLd x 2,
// the fp32 result tile 64 x kGsLd x 4.
constexpr size_t kTcSmem = 2 * kTile * kOpLd * 2 + 32 * kBLd * 2 + kTile * kGsLd * 4;

template <bool kVec>
__device__ __forceinline__ void eu_product_tc(float (&acc)[4][4], const float* __restrict__ E,
                                              int64_t moff, int64_t li0, int nA, int64_t n,
                                              const float* __restrict__ r, int64_t a,
                                              const uint16_t* __restrict__ u16, int64_t D,
                                              int64_t d0, unsigned char* smem) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // the host picks this path only on sm_80+ devices (see launch_grad_rows)
#else
  using namespace nvcuda;
  uint16_t* Ahi = reinterpret_cast<uint16_t*>(smem);
  uint16_t* Alo = Ahi + kTile * kOpLd;
  uint16_t* Bs = Alo + kTile * kOpLd;
  auto* out = reinterpret_cast<float(*)[kGsLd]>(Bs + 32 * kBLd);
  const int tid = threadIdx.x, warp = tid / 32;
  const int fr = warp % 4, fc = (warp / 4) * 2;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> c0, c1;
  wmma::fill_fragment(c0, 0.0f);
  wmma::fill_fragment(c1, 0.0f);
  const int ar = tid / 4, ak = (tid % 4) * 8;  // A staging: row ar, k = ak .. ak + 8
  const int br = tid / 8, bc = (tid % 8) * 8;  // B staging: k row br, columns bc .. bc + 8
  for (int64_t k0 = 0; k0 < n; k0 += 32) {
#pragma unroll
    for (int q = 0; q < 8; ++q) {
      const int64_t k = k0 + ak + q;
      const float x = (ar < nA && k < n) ? E[moff + (li0 + ar) * n + k] * r[a + k] : 0.0f;
      const c10::BFloat16 hi(x);
      const c10::BFloat16 lo(x - static_cast<float>(hi));
      Ahi[ar * kOpLd + ak + q] = hi.x;
      Alo[ar * kOpLd + ak + q] = lo.x;
    }
    stage8<kVec>(Bs + br * kBLd + bc, u16, D, a + k0 + br, k0 + br < n, d0 + bc);
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < 32; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> ah, al;
      wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> fb;
      wmma::load_matrix_sync(ah, reinterpret_cast<const __nv_bfloat16*>(Ahi + fr * 16 * kOpLd + kk),
                             kOpLd);
      wmma::load_matrix_sync(al, reinterpret_cast<const __nv_bfloat16*>(Alo + fr * 16 * kOpLd + kk),
                             kOpLd);
      wmma::load_matrix_sync(fb, reinterpret_cast<const __nv_bfloat16*>(Bs + kk * kBLd + fc * 16),
                             kBLd);
      wmma::mma_sync(c0, ah, fb, c0);
      wmma::mma_sync(c0, al, fb, c0);
      wmma::load_matrix_sync(
          fb, reinterpret_cast<const __nv_bfloat16*>(Bs + kk * kBLd + (fc + 1) * 16), kBLd);
      wmma::mma_sync(c1, ah, fb, c1);
      wmma::mma_sync(c1, al, fb, c1);
    }
    __syncthreads();
  }
  wmma::store_matrix_sync(&out[fr * 16][fc * 16], c0, kGsLd, wmma::mem_row_major);
  wmma::store_matrix_sync(&out[fr * 16][(fc + 1) * 16], c1, kGsLd, wmma::mem_row_major);
  __syncthreads();
  const int tx = tid % 16, ty = tid / 16;
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = out[ty + 16 * i][tx + 16 * j];
#endif
}

// g_k for the 64 units of row tile ti of one example, columns d0 .. d0+64, side blockIdx.z
// (0 student, 1 teacher): g_i = r_i (G_i - u_i r_i rad_i) (or r_i G_i where |u_i| <= eps), with
// G_i = sgn sum_j E_ij r_j u_j, rad_i = sgn sum_j E_ij c_ij, sgn = +1 student / -1 teacher.
// kTc: the G product on tensor cores (bf16 units, sm_80+), else on CUDA cores.
template <typename scalar_t, typename acc_t, bool kTc, bool kVec>
__global__ void __launch_bounds__(kThreads)
    grad_rows_kernel(const scalar_t* __restrict__ us, const scalar_t* __restrict__ ut, int64_t Ds,
                     int64_t Dt, const acc_t* __restrict__ rs, const acc_t* __restrict__ nrms,
                     const acc_t* __restrict__ rt, const acc_t* __restrict__ nrmt,
                     const acc_t* __restrict__ scs, const acc_t* __restrict__ sct,
                     const int64_t* __restrict__ rowplan, const acc_t* __restrict__ E,
                     const acc_t* __restrict__ radS, const acc_t* __restrict__ radT,
                     const double* __restrict__ kd, bool need_s,
                     bool need_t, acc_t* __restrict__ gs, acc_t* __restrict__ gt) {
  constexpr size_t kBytes = kTc ? kTcSmem : sizeof(simt::Stage<acc_t>);
  static_assert(kBytes <= 48 * 1024, "static shared memory limit");
  __shared__ __align__(128) unsigned char smem[kBytes];
  const bool teacher = blockIdx.z == 1;
  const int64_t D = teacher ? Dt : Ds;
  const int64_t d0 = int64_t(blockIdx.y) * kTile;
  if (!(teacher ? need_t : need_s) || d0 >= D) return;  // uniform per block
  const scalar_t* u = teacher ? ut : us;
  const acc_t* r = teacher ? rt : rs;
  const acc_t* nrm = teacher ? nrmt : nrms;
  const acc_t* sc = teacher ? sct : scs;  // row scales 2^-e (nullptr: 1)
  const acc_t* rad = teacher ? radT : radS;
  acc_t* g = teacher ? gt : gs;  // in the accumulation type: rounded to the input dtype once,
                                 // by the caller (fused and separate backward share the bits)
  const acc_t sgn = teacher ? acc_t(-1) : acc_t(1);

  const int64_t* p = rowplan + int64_t(blockIdx.x) * kPlanCols;
  const int64_t a = p[kA], n = p[kN], ti = p[kTi], moff = p[kMoff], roff = p[kRoff], Tb = p[kTb];
  const int nA = int(n - ti * kTile < kTile ? n - ti * kTile : kTile);
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int64_t li0 = ti * kTile;

  acc_t acc[4][4];
  simt::zero(acc);
  if (n >= 2) {  // uniform per block; n == 1: no pair, zero gradient
    if constexpr (kTc) {
      eu_product_tc<kVec>(acc, E, moff, li0, nA, n, r, a, reinterpret_cast<const uint16_t*>(u),
                          D, d0, smem);
    } else {
      auto loadE = [&](int rr, int64_t k) -> acc_t {
        return (rr < nA && k < n) ? E[moff + (li0 + rr) * n + k] : acc_t(0);
      };
      auto loadU = [&](int c, int64_t k) -> acc_t {
        return (k < n && d0 + c < D) ? r[a + k] * static_cast<acc_t>(u[(a + k) * D + d0 + c])
                                     : acc_t(0);
      };
      simt::gemm_nt<acc_t, simt::Contig::K, simt::Contig::Row>(
          acc, n, loadE, loadU, *reinterpret_cast<simt::Stage<acc_t>*>(smem));
    }
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int rr = ty + 16 * i;
    if (rr >= nA) continue;
    const int64_t li = li0 + rr, gi = a + li;
    acc_t rd = 0;
    if (n >= 2)
      for (int64_t s = 0; s < Tb; ++s) rd += rad[roff + li * Tb + s];
    rd *= sgn;
    const acc_t ri = r[gi];
    // The rows are u'_i = sc_i u_i: the clamp is |u'_i| <= eps sc_i, and dL/du_i = sc_i dL/du'_i.
    const acc_t sci = sc ? sc[gi] : acc_t(1);
    const double ksc = kd[0] * double(sci);  // k = 4 g / Z, and the row scale
    const bool clamped = nrm[gi] <= acc_t(kCosEps) * sci;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t d = d0 + tx + 16 * j;
      if (d >= D) continue;
      const acc_t G = sgn * acc[i][j];
      const acc_t gv =
          clamped ? ri * G : ri * (G - static_cast<acc_t>(u[gi * D + d]) * ri * rd);
      g[gi * D + d] = static_cast<acc_t>(double(gv) * ksc);
    }
  }
}

// ---------------------------------------------------------------- host side

struct Plan {
  at::Tensor tiles, rows;  // device int64 [*, kPlanCols]
  int64_t ntiles = 0, nrows = 0, e_size = 0, rad_size = 0;
};

Plan make_plan(const at::Tensor& cu_dev) {
  const auto cu = cu_dev.cpu();
  const int64_t* c = cu.const_data_ptr<int64_t>();
  const int64_t B = cu.numel() - 1;
  std::vector<int64_t> tiles, rows;
  Plan pl;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t a = c[b], n = c[b + 1] - c[b];
    if (n == 0) continue;
    const int64_t Tb = ceil_div<int64_t>(n, kTile);
    const int64_t moff = pl.e_size, roff = pl.rad_size;
    if (n >= 2) {
      for (int64_t ti = 0; ti < Tb; ++ti)
        for (int64_t tj = ti; tj < Tb; ++tj) tiles.insert(tiles.end(), {a, n, ti, tj, moff, roff, Tb, 0});
      pl.e_size += n * n;
      pl.rad_size += n * Tb;
    }
    for (int64_t ti = 0; ti < Tb; ++ti) rows.insert(rows.end(), {a, n, ti, 0, moff, roff, Tb, 0});
  }
  pl.ntiles = int64_t(tiles.size()) / kPlanCols;
  pl.nrows = int64_t(rows.size()) / kPlanCols;
  TORCH_CHECK(pl.ntiles <= std::numeric_limits<int32_t>::max() &&
                  pl.nrows <= std::numeric_limits<int32_t>::max(),
              "relational_loss: too many tiles for one CUDA launch");
  auto to_dev = [&](std::vector<int64_t>& v, int64_t k) {
    if (k == 0) return at::empty({0, kPlanCols}, cu_dev.options());
    return at::from_blob(v.data(), {k, kPlanCols}, at::TensorOptions().dtype(at::kLong))
        .to(cu_dev.device());
  };
  pl.tiles = to_dev(tiles, pl.ntiles);
  pl.rows = to_dev(rows, pl.nrows);
  return pl;
}

// Common compute dtype of the two unit tensors (fp64 whenever any float input is fp64).
at::ScalarType compute_dtype(const at::Tensor& us, const at::Tensor& ut, const at::Tensor& w) {
  if (us.scalar_type() == at::kDouble || ut.scalar_type() == at::kDouble ||
      w.scalar_type() == at::kDouble)
    return at::kDouble;
  return at::promote_types(us.scalar_type(), ut.scalar_type());
}

struct Prepared {
  at::Tensor us, ut, w, rs, nrms, rt, nrmt;
  at::Tensor scs, sct;  // per-row power-of-two scales (undefined for fp16: rows unscaled)
  at::Tensor eps;       // [1] double: 1e-5 / c^2, c = max weight (1 if all weights are 0)
  at::ScalarType ct, acc;
};

// Each row of u scaled by 2^-e_i, max|u_i| 2^-e_i in [0.5, 1) (e_i = 0 for zero or non-finite
// rows; e_i >= min_exponent + 25 so that 2^-e_i is finite), and the scales 2^-e_i. Exact (powers
// of two) except for elements ~2^126 below their row's maximum, which underflow; cosines are
// scale invariant, so the Gram and norm kernels then never overflow (|u| > ~1.8e19 in fp32/bf16)
// nor underflow (|u| < ~1e-19). Device ops only: no host sync. fp16 rows are left as they are
// (|u| <= 65504: their squares and products can neither overflow nor underflow in fp32, and
// scaling could push small fp16 elements into subnormals).
std::pair<at::Tensor, at::Tensor> pow2_rows(const at::Tensor& u, at::ScalarType acc) {
  if (u.scalar_type() == at::kHalf || u.size(1) == 0 || u.size(0) == 0) return {u, at::Tensor()};
  const auto amax = u.abs().amax(1).to(acc);
  const auto ok = at::isfinite(amax).logical_and_(amax.gt(0));
  auto e = std::get<1>(at::frexp(at::where(ok, amax, at::ones_like(amax))));
  e = at::where(ok, e, at::zeros_like(e))
          .clamp_min(acc == at::kDouble ? std::numeric_limits<double>::min_exponent + 25
                                        : std::numeric_limits<float>::min_exponent + 25);
  const auto sc = at::ldexp(at::ones_like(amax), e.neg());
  return {(u.to(acc) * sc.unsqueeze(1)).to(u.scalar_type()).contiguous(), sc.contiguous()};
}

Prepared prepare(const at::Tensor& u_student, const at::Tensor& u_teacher,
                 const at::Tensor& unit_weights, cudaStream_t stream) {
  Prepared pr;
  pr.ct = compute_dtype(u_student, u_teacher, unit_weights);
  pr.acc = pr.ct == at::kDouble ? at::kDouble : at::kFloat;
  std::tie(pr.us, pr.scs) = pow2_rows(u_student.detach().to(pr.ct).contiguous(), pr.acc);
  std::tie(pr.ut, pr.sct) = pow2_rows(u_teacher.detach().to(pr.ct).contiguous(), pr.acc);
  // Weights divided by their maximum c, the clamp 1e-5 becoming 1e-5 / c^2 (the loss is
  // otherwise invariant): no W_i W_j overflows (1e30 weights) or underflows. On the device.
  const auto ao = pr.us.options().dtype(pr.acc);
  pr.w = unit_weights.detach().to(pr.acc).contiguous();
  if (pr.w.numel() > 0) {
    auto c = pr.w.amax();
    c = at::where(c.gt(0), c, at::ones_like(c));
    pr.w = pr.w.div(c).contiguous();
    const auto cd = c.to(at::kDouble);
    pr.eps = at::full({1}, kWeightSumEps, ao.dtype(at::kDouble)).div_(cd).div_(cd);
  } else {
    pr.eps = at::full({1}, kWeightSumEps, ao.dtype(at::kDouble));
  }
  const int64_t N = pr.us.size(0);
  pr.rs = at::empty({N}, ao);
  pr.nrms = at::empty({N}, ao);
  pr.rt = at::empty({N}, ao);
  pr.nrmt = at::empty({N}, ao);
  if (N == 0) return pr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pr.ct, "relational_loss_norms", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const unsigned blocks = cuda::grid_1d(N, 8, kFwd, "units");
    norms_kernel<scalar_t, acc_t><<<blocks, 256, 0, stream>>>(
        pr.us.const_data_ptr<scalar_t>(), N, pr.us.size(1),
        pr.scs.defined() ? pr.scs.const_data_ptr<acc_t>() : nullptr,
        pr.rs.mutable_data_ptr<acc_t>(), pr.nrms.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    norms_kernel<scalar_t, acc_t><<<blocks, 256, 0, stream>>>(
        pr.ut.const_data_ptr<scalar_t>(), N, pr.ut.size(1),
        pr.sct.defined() ? pr.sct.const_data_ptr<acc_t>() : nullptr,
        pr.rt.mutable_data_ptr<acc_t>(), pr.nrmt.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return pr;
}

template <typename scalar_t, typename acc_t, int kMode>
void launch_tiles(const Prepared& pr, const Plan& pl, acc_t* partial, const acc_t* scale,
                  acc_t* E, acc_t* radS, acc_t* radT, cudaStream_t stream) {
  if (pl.ntiles == 0) return;
  const scalar_t* us = pr.us.const_data_ptr<scalar_t>();
  const scalar_t* ut = pr.ut.const_data_ptr<scalar_t>();
  const int64_t Ds = pr.us.size(1), Dt = pr.ut.size(1);
  const int64_t* plan = pl.tiles.const_data_ptr<int64_t>();
  const acc_t* w = pr.w.const_data_ptr<acc_t>();
  const acc_t* rs = pr.rs.const_data_ptr<acc_t>();
  const acc_t* rt = pr.rt.const_data_ptr<acc_t>();
  const dim3 grid(unsigned(pl.ntiles));
  if constexpr (is_half16<scalar_t>::value) {
    if (cuda::device_major(pr.us.get_device()) >= 8) {
      const bool vec = cuda::rows_16b_aligned<scalar_t>(us, Ds) &&
                       cuda::rows_16b_aligned<scalar_t>(ut, Dt);
      if (vec)
        tile_kernel<scalar_t, acc_t, true, kMode, true><<<grid, kThreads, 0, stream>>>(
            us, ut, Ds, Dt, w, rs, rt, plan, partial, scale, E, radS, radT);
      else
        tile_kernel<scalar_t, acc_t, true, kMode, false><<<grid, kThreads, 0, stream>>>(
            us, ut, Ds, Dt, w, rs, rt, plan, partial, scale, E, radS, radT);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return;
    }
  }
  tile_kernel<scalar_t, acc_t, false, kMode, false><<<grid, kThreads, 0, stream>>>(
      us, ut, Ds, Dt, w, rs, rt, plan, partial, scale, E, radS, radT);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The row-gradient launch. A function template (not code inside the dispatch lambda) so that
// `if constexpr` really discards the tensor-core kernel for every type but bf16.
template <typename scalar_t, typename acc_t>
void launch_grad_rows(const Prepared& pr, const Plan& pl, const at::Tensor& E,
                      const at::Tensor& radS, const at::Tensor& radT, const at::Tensor& kbuf,
                      bool need_student,
                      bool need_teacher, at::Tensor& gs, at::Tensor& gt, int64_t dchunks,
                      cudaStream_t stream) {
  const dim3 grid(unsigned(pl.nrows), unsigned(dchunks), 2);
  const int64_t Ds = pr.us.size(1), Dt = pr.ut.size(1);
  const scalar_t* us = pr.us.const_data_ptr<scalar_t>();
  const scalar_t* ut = pr.ut.const_data_ptr<scalar_t>();
  const auto args = std::make_tuple(
      us, ut, Ds, Dt, pr.rs.const_data_ptr<acc_t>(), pr.nrms.const_data_ptr<acc_t>(),
      pr.rt.const_data_ptr<acc_t>(), pr.nrmt.const_data_ptr<acc_t>(),
      pr.scs.defined() ? pr.scs.const_data_ptr<acc_t>() : nullptr,
      pr.sct.defined() ? pr.sct.const_data_ptr<acc_t>() : nullptr,
      pl.rows.const_data_ptr<int64_t>(), E.const_data_ptr<acc_t>(), radS.const_data_ptr<acc_t>(),
      radT.const_data_ptr<acc_t>(), kbuf.const_data_ptr<double>(), need_student, need_teacher,
      gs.mutable_data_ptr<acc_t>(),
      gt.mutable_data_ptr<acc_t>());
  auto launch = [&](auto kernel) {
    std::apply([&](auto... a) { kernel<<<grid, kThreads, 0, stream>>>(a...); }, args);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    if (cuda::device_major(pr.us.get_device()) >= 8) {
      if (cuda::rows_16b_aligned<scalar_t>(us, Ds) && cuda::rows_16b_aligned<scalar_t>(ut, Dt))
        launch(grad_rows_kernel<scalar_t, acc_t, true, true>);
      else
        launch(grad_rows_kernel<scalar_t, acc_t, true, false>);
      return;
    }
  }
  launch(grad_rows_kernel<scalar_t, acc_t, false, false>);
}

template <typename acc_t>
void launch_finalize(const Prepared& pr, const at::Tensor& cu, const acc_t* partial,
                     int64_t ntiles, const acc_t* grad, acc_t* out, cudaStream_t stream,
                     double* k_out = nullptr) {
  finalize_kernel<acc_t><<<1, kThreads, 0, stream>>>(
      partial, ntiles, pr.w.const_data_ptr<acc_t>(), cu.const_data_ptr<int64_t>(), cu.numel() - 1,
      pr.eps.const_data_ptr<double>(), grad, out, k_out);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor relational_loss_cuda(const at::Tensor& u_student, const at::Tensor& u_teacher,
                                const at::Tensor& unit_weights, const at::Tensor& cu_units) {
  const NoAutocast no_autocast;
  const c10::cuda::CUDAGuard guard(u_student.device());
  const auto cu = check_relational_loss_args(kFwd, u_student, u_teacher, unit_weights, cu_units);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const auto pr = prepare(u_student, u_teacher, unit_weights, stream);
  if (pr.us.size(0) == 0) return at::zeros({}, pr.us.options().dtype(pr.acc));
  const auto pl = make_plan(cu);
  auto out = cuda::new_output({}, pr.us.options().dtype(pr.acc));
  auto partial = at::empty({std::max<int64_t>(pl.ntiles, 1)}, pr.us.options().dtype(pr.acc));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pr.ct, "relational_loss_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    launch_tiles<scalar_t, acc_t, kLoss>(pr, pl, partial.mutable_data_ptr<acc_t>(), nullptr,
                                         nullptr, nullptr, nullptr, stream);
    launch_finalize<acc_t>(pr, cu, partial.const_data_ptr<acc_t>(), pl.ntiles, nullptr,
                           out.mutable_data_ptr<acc_t>(), stream);
  });
  return out;
}

// Gradients (and, with want_loss, the loss) for an upstream gradient `grad` ([1], acc dtype).
// Returns (loss or undefined, gs, gt) with gs/gt in the input dtypes; a side that is not needed
// comes back as zeros.
std::tuple<at::Tensor, at::Tensor, at::Tensor> loss_and_grad_impl(
    const at::Tensor& cu, const at::Tensor& u_student, const at::Tensor& u_teacher,
    const at::Tensor& unit_weights, const std::optional<at::Tensor>& grad, bool need_student,
    bool need_teacher, bool want_loss, bool grads_in_acc = false) {
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const auto pr = prepare(u_student, u_teacher, unit_weights, stream);
  const auto pl = make_plan(cu);
  const auto ao = pr.us.options().dtype(pr.acc);
  const auto g = grad ? grad->detach().to(pr.acc).reshape({1}).contiguous() : at::ones({1}, ao);
  auto kbuf = at::empty({1}, ao.dtype(at::kDouble));  // k = 4 g / max(Z', eps'), in double
  auto loss = want_loss ? cuda::new_output({}, ao) : at::Tensor();
  auto partial = at::empty({std::max<int64_t>(pl.ntiles, 1)}, ao);
  auto E = at::empty({std::max<int64_t>(pl.e_size, 1)}, ao);
  auto radS = at::empty({std::max<int64_t>(pl.rad_size, 1)}, ao);
  auto radT = at::empty({std::max<int64_t>(pl.rad_size, 1)}, ao);
  const auto co = pr.us.options();  // compute dtype ct
  const auto go = co.dtype(pr.acc);  // gradients computed in the accumulation dtype
  auto gs = need_student ? cuda::new_output(pr.us.sizes(), go) : at::zeros(pr.us.sizes(), go);
  auto gt = need_teacher ? cuda::new_output(pr.ut.sizes(), go) : at::zeros(pr.ut.sizes(), go);
  const int64_t Ds = pr.us.size(1), Dt = pr.ut.size(1);
  const int64_t dchunks = ceil_div<int64_t>(std::max(Ds, Dt), kTile);
  TORCH_CHECK(dchunks <= 65535, kBwd, ": hidden width too large for one CUDA launch");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pr.ct, "relational_loss_grad_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    launch_finalize<acc_t>(pr, cu, nullptr, 0, g.const_data_ptr<acc_t>(), nullptr, stream,
                           kbuf.mutable_data_ptr<double>());
    if (want_loss) {
      launch_tiles<scalar_t, acc_t, kLossAndGrad>(
          pr, pl, partial.mutable_data_ptr<acc_t>(), nullptr,
          E.mutable_data_ptr<acc_t>(), radS.mutable_data_ptr<acc_t>(),
          radT.mutable_data_ptr<acc_t>(), stream);
      launch_finalize<acc_t>(pr, cu, partial.const_data_ptr<acc_t>(), pl.ntiles, nullptr,
                             loss.mutable_data_ptr<acc_t>(), stream);
    } else {
      launch_tiles<scalar_t, acc_t, kGrad>(pr, pl, nullptr, nullptr,
                                           E.mutable_data_ptr<acc_t>(),
                                           radS.mutable_data_ptr<acc_t>(),
                                           radT.mutable_data_ptr<acc_t>(), stream);
    }
    if (pl.nrows > 0 && dchunks > 0)
      launch_grad_rows<scalar_t, acc_t>(pr, pl, E, radS, radT, kbuf, need_student, need_teacher, gs,
                                        gt, dchunks, stream);
  });
  if (grads_in_acc) return {loss, gs, gt};
  return {loss, gs.to(u_student.scalar_type()), gt.to(u_teacher.scalar_type())};
}

std::tuple<at::Tensor, at::Tensor> relational_loss_backward_cuda(
    const at::Tensor& grad, const at::Tensor& u_student, const at::Tensor& u_teacher,
    const at::Tensor& unit_weights, const at::Tensor& cu_units, bool need_student,
    bool need_teacher) {
  const NoAutocast no_autocast;
  const c10::cuda::CUDAGuard guard(u_student.device());
  const auto cu = check_relational_loss_args(kBwd, u_student, u_teacher, unit_weights, cu_units);
  check_float(kBwd, "grad", grad);
  TORCH_CHECK_VALUE(grad.numel() == 1, kBwd, ": grad must be a scalar, got shape ", grad.sizes());
  check_same_device(kBwd, "grad", grad, "u_student", u_student);
  if (u_student.size(0) == 0 || !(need_student || need_teacher))
    return {at::zeros_like(u_student, at::MemoryFormat::Contiguous),
            at::zeros_like(u_teacher, at::MemoryFormat::Contiguous)};
  auto res = loss_and_grad_impl(cu, u_student, u_teacher, unit_weights, grad, need_student,
                                need_teacher, /*want_loss=*/false);
  return {std::get<1>(res), std::get<2>(res)};
}

// Loss and the gradients for an upstream gradient of 1 in one pass (the Gram tiles are computed
// once); a gradient that is not requested comes back with shape [0, D] (schema of the CPU op).
std::tuple<at::Tensor, at::Tensor, at::Tensor> relational_loss_and_grad_cuda(
    const at::Tensor& u_student, const at::Tensor& u_teacher, const at::Tensor& unit_weights,
    const at::Tensor& cu_units, bool need_student, bool need_teacher) {
  const NoAutocast no_autocast;
  const c10::cuda::CUDAGuard guard(u_student.device());
  const auto cu =
      check_relational_loss_args(kFwdGrad, u_student, u_teacher, unit_weights, cu_units);
  const int64_t N = u_student.size(0), Ds = u_student.size(1), Dt = u_teacher.size(1);
  // The gradients for g = 1 are returned in the accumulation dtype (as on the CPU): the autograd
  // backward scales them before rounding to the input dtype.
  const auto acc =
      compute_dtype(u_student, u_teacher, unit_weights) == at::kDouble ? at::kDouble : at::kFloat;
  auto empty_s = at::empty({0, Ds}, u_student.options().dtype(acc));
  auto empty_t = at::empty({0, Dt}, u_teacher.options().dtype(acc));
  if (N == 0) return {at::zeros({}, u_student.options().dtype(acc)), empty_s, empty_t};
  auto [loss, gs, gt] =
      loss_and_grad_impl(cu, u_student, u_teacher, unit_weights, std::nullopt, need_student,
                         need_teacher, /*want_loss=*/true, /*grads_in_acc=*/true);
  return {loss, need_student ? gs : empty_s, need_teacher ? gt : empty_t};
}

}  // namespace

TORCH_LIBRARY_IMPL(mta_ext, CUDA, m) {
  m.impl("relational_loss", &relational_loss_cuda);
  m.impl("relational_loss_and_grad", &relational_loss_and_grad_cuda);
  m.impl("relational_loss_backward", &relational_loss_backward_cuda);
}

}  // namespace mta_ext

