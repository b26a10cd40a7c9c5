// relational_loss CUDA device code, part 2: the reductions (finalize: loss and the backward
// scale k = 4 g / Z on the device) and the row gradients. Included by
// cuda/relational_loss_cuda.cu only (see the overview there).
#pragma once

#include "cuda/relational_loss_tiles.cuh"

namespace mta_ext::relational_cuda {

// ---------------------------------------------------------------- finalize

// One block: out = num / max(den, eps) (forward) or the backward's gradient scale
// k = 4 g / max(den, eps) (g = grad[0], 1 when grad is nullptr), num = sum of tile partials,
// den = sum_b 2 sum_{j in b} W_j (sum_{i<j in b} W_i) over examples with n_b >= 2 (non-negative
// terms only: no cancellation), W divided by its maximum c and eps = 1e-5 / c^2 (eps_p, on the
// device: see weight_prep_kernel). A plan built from wrong host metadata (*bad != 0, see
// plan_fill_kernel) makes the result NaN: visible, without a host sync.
template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
    finalize_kernel(const acc_t* __restrict__ partial, int64_t ntiles, const acc_t* __restrict__ w,
                    const int64_t* __restrict__ cu, int64_t B, int64_t N,
                    const double* __restrict__ eps_p, const int* __restrict__ bad,
                    const acc_t* __restrict__ grad, acc_t* __restrict__ out,
                    double* __restrict__ grad_scale_out) {
  __shared__ acc_t wred[kThreads / 32];
  acc_t num = 0, den = 0;
  for (int64_t t = threadIdx.x; t < ntiles; t += kThreads) num += partial[t];
  for (int64_t b = threadIdx.x; b < B; b += kThreads) {
    int64_t s = 0, n = 0;
    plan::example_units(cu, b, N, s, n);  // clamped into [0, N] like the plan
    const int64_t e = s + n;
    if (n < 2) continue;
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
    const double nan = std::numeric_limits<double>::quiet_NaN();
    if (grad_scale_out != nullptr)
      grad_scale_out[0] = *bad ? nan : (grad ? double(grad[0]) : 1.0) * 4.0 / d;
    else
      out[0] = static_cast<acc_t>(*bad ? nan : double(num) / d);
  }
}

// Fills the gradients with NaN when the plan was built from wrong host metadata (*bad != 0):
// rows of units the plan left out are otherwise never written. Grid-stride; exits at once when
// the metadata was right.
template <typename acc_t>
__global__ void __launch_bounds__(256)
    nan_if_bad_kernel(const int* __restrict__ bad, acc_t* __restrict__ a, int64_t na,
                      acc_t* __restrict__ b, int64_t nb) {
  if (*bad == 0) return;
  const acc_t nan = std::numeric_limits<acc_t>::quiet_NaN();
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < na + nb; i += stride)
    (i < na ? a[i] : b[i - na]) = nan;
}

// ---------------------------------------------------------------- backward rows

constexpr int kBLd = kTile + 8;  // row stride of the staged U tile (WMMA: multiple of 8)

// Tensor-core G tile for bf16 units: acc[i][j] = sum_j' E_ij' r_j' u_j'[d] for this thread's
// elements (rows ty + 16 i, columns d0 + tx + 16 j). E' = E r (fp32) is split into bf16
// hi + lo (E' - hi), two MMAs per step: ~fp32 accuracy with the exact bf16 u as the other
// operand, fp32 accumulation. Shared memory (bytes): A hi/lo 2 x 64 x kOpLd x 2, B 32 x kBLd x 2,
// the fp32 result tile 64 x kGsLd x 4.
constexpr size_t kTcSmem = 2 * kTile * kOpLd * 2 + 32 * kBLd * 2 + kTile * kGsLd * 4;

template <RowLoad kLoad>
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
  auto* out = reinterpret_cast<float (*)[kGsLd]>(Bs + 32 * kBLd);
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
    stage8<kLoad>(Bs + br * kBLd + bc, u16, D, a + k0 + br, k0 + br < n, d0 + bc);
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

// The row-gradient kernel's arguments for one side (student or teacher).
template <typename scalar_t, typename acc_t>
struct RowSide {
  const scalar_t* u;  // [N, D] units in the compute dtype (rows scaled by powers of two)
  int64_t D;
  const acc_t* r;    // [N] 1 / clamped norm
  const acc_t* nrm;  // [N] clamped norm
  const acc_t* sc;   // [N] row scales 2^-e (nullptr: 1, fp16)
  const acc_t* rad;  // radial partials from tile_kernel
  acc_t* g;          // [N, D] gradient in the accumulation dtype (rounded once by the caller:
                     // the fused and the separate backward share the bits)
  bool needed;
};

template <typename scalar_t, typename acc_t>
struct RowParams {
  RowSide<scalar_t, acc_t> student, teacher;
  const int64_t* rowplan;    // [nrows, kPlanCols] row plan
  const acc_t* E;            // W_i W_j (cS - cT) blocks from tile_kernel
  const double* grad_scale;  // [1] k = 4 g / Z, on the device (finalize_kernel)
};

// Where the G product of the row gradients runs.
enum class GradMma : bool { kCudaCores = false, kTensorCores = true };  // tensor: bf16, sm_80+

// g_k for the 64 units of row tile ti of one example, columns d0 .. d0+64, side blockIdx.z
// (0 student, 1 teacher): g_i = r_i (G_i - u_i r_i rad_i) (or r_i G_i where |u_i| <= eps), with
// G_i = sgn sum_j E_ij r_j u_j, rad_i = sgn sum_j E_ij c_ij, sgn = +1 student / -1 teacher,
// scaled by k = 4 g / Z.
template <typename scalar_t, typename acc_t, GradMma kMma, RowLoad kLoad>
__global__ void __launch_bounds__(kThreads) grad_rows_kernel(const RowParams<scalar_t, acc_t> P) {
  constexpr bool kTc = kMma == GradMma::kTensorCores;
  constexpr size_t kBytes = kTc ? kTcSmem : sizeof(simt::Stage<acc_t>);
  static_assert(kBytes <= 48 * 1024, "static shared memory limit");
  __shared__ __align__(128) unsigned char smem[kBytes];
  const bool teacher = blockIdx.z == 1;
  const RowSide<scalar_t, acc_t> S = teacher ? P.teacher : P.student;
  const int64_t D = S.D;
  const int64_t d0 = int64_t(blockIdx.y) * kTile;
  if (!S.needed || d0 >= D) return;  // uniform per block
  const scalar_t* __restrict__ u = S.u;
  const acc_t* __restrict__ r = S.r;
  const acc_t* __restrict__ E = P.E;
  const acc_t sgn = teacher ? acc_t(-1) : acc_t(1);

  const int64_t* p = P.rowplan + int64_t(blockIdx.x) * kPlanCols;
  const int64_t a = p[kA], n = p[kN], ti = p[kTi], moff = p[kMoff], roff = p[kRoff], Tb = p[kTb];
  const int nA = int(n - ti * kTile < kTile ? n - ti * kTile : kTile);
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int64_t li0 = ti * kTile;

  acc_t acc[4][4];
  simt::zero(acc);
  if (n >= 2) {  // uniform per block; n == 1: no pair, zero gradient
    if constexpr (kTc) {
      eu_product_tc<kLoad>(acc, E, moff, li0, nA, n, r, a, reinterpret_cast<const uint16_t*>(u), D,
                           d0, smem);
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
      for (int64_t s = 0; s < Tb; ++s) rd += S.rad[roff + li * Tb + s];
    rd *= sgn;
    const acc_t ri = r[gi];
    // The rows are u'_i = sc_i u_i: the clamp is |u'_i| <= eps sc_i, and dL/du_i = sc_i dL/du'_i.
    const acc_t sci = S.sc ? S.sc[gi] : acc_t(1);
    const double ksc = P.grad_scale[0] * double(sci);  // k = 4 g / Z, and the row scale
    const bool clamped = S.nrm[gi] <= acc_t(kCosEps) * sci;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t d = d0 + tx + 16 * j;
      if (d >= D) continue;
      const acc_t G = sgn * acc[i][j];
      const acc_t gv = clamped ? ri * G : ri * (G - static_cast<acc_t>(u[gi * D + d]) * ri * rd);
      S.g[gi * D + d] = static_cast<acc_t>(double(gv) * ksc);
    }
  }
}

}  // namespace mta_ext::relational_cuda
