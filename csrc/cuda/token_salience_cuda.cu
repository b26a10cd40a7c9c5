// token_salience: the CUDA kernel; schema and checks in ops/token_salience.cpp, the CPU kernel
// in cpu/token_salience_cpu.cpp.
//
// w_t = (1/T_valid) sum_s softmax_t(S)[s, t], S = Ĥ Ĥᵀ / sqrt(D), padding keys and the diagonal
// masked (docs/DESIGN.md §2.1). Flash-style: the T x T matrix never reaches global memory.
//   1. scale kernel (a warp per token): c_t = D^-1/4 / (std_d(h_t) + 1e-5) for valid tokens,
//      0 for padding, so S_st = c_s c_t (h_s . h_t).
//   2. row-stats kernel (a block per 64 queries): streams 64-key tiles, each a 64x64 dot tile on
//      CUDA cores, with an online softmax: running max m_s and normaliser l_s per query.
//   3. column kernel (a block per 64 keys): streams the query tiles, recomputes the dot tile and
//      sums exp(S_st - m_s) / l_s over the queries s into per-thread column accumulators, then
//      reduces them in a fixed order. Each output element has exactly one writer and a fixed
//      summation order: bit-identical across runs, no atomics.
// Accumulation is fp32 (fp64 for fp64 input) on CUDA cores, as the CPU reference: bf16/fp16
// tensor cores would cost ~2^-8 relative error inside exp() for large logits. `key_block` is a
// CPU-path knob; the CUDA path always streams 64-key tiles.
#include "cuda/token_salience_cuda.h"

#include "ops/token_salience.h"

#include "common/checks.h"
#include "common/cuda_utils.cuh"
#include "common/no_autocast.h"
#include "common/simt_tile.cuh"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <cmath>
#include <limits>

namespace mta_ext {
namespace {

using cuda::ceil_div;
namespace simt = cuda::simt;
constexpr const char* kOp = "token_salience";

template <typename acc_t>
__device__ __forceinline__ acc_t neg_inf() {
  return -std::numeric_limits<acc_t>::infinity();
}

// c_t = D^-1/4 / (std(h_t) + eps) for valid tokens (Bessel std; 0 when D == 1), 0 for padding.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(256)
    scale_kernel(const scalar_t* __restrict__ h, const bool* __restrict__ mask, int64_t rows,
                 int64_t D, acc_t d_pow, acc_t* __restrict__ scale) {
  const int64_t row = int64_t(blockIdx.x) * 8 + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;  // whole warp leaves together
  if (!mask[row]) {
    if (lane == 0) scale[row] = acc_t(0);
    return;
  }
  const scalar_t* x = h + row * D;
  // Scale the row by a power of two (max |x| 2^-e in [0.5, 1)) before summing and squaring, so
  // the squared deviations neither overflow (|x| > ~1.8e19 in fp32) nor underflow; non-finite
  // elements propagate (NaN scale). The same maths as the CPU kernel.
  acc_t amax = 0;
  for (int64_t d = lane; d < D; d += 32) amax = max(amax, abs(static_cast<acc_t>(x[d])));
  amax = cuda::warp_max(amax);
  int e = 0;
  if (amax > acc_t(0) && isfinite(amax)) frexp(amax, &e);
  e = max(e, std::numeric_limits<acc_t>::min_exponent + 25);  // 2^-e stays finite
  const acc_t sc = ldexp(acc_t(1), -e);
  acc_t s = 0;
  for (int64_t d = lane; d < D; d += 32) s += static_cast<acc_t>(x[d]) * sc;
  const acc_t mean = cuda::warp_sum(s) / acc_t(D);
  acc_t q = 0;
  for (int64_t d = lane; d < D; d += 32) {
    const acc_t v = static_cast<acc_t>(x[d]) * sc - mean;
    q += v * v;
  }
  q = cuda::warp_sum(q);
  // In double for fp32 too (as the CPU kernel): sd 2^e must not overflow before the division.
  const double sd = D > 1 ? ldexp(sqrt(double(q) / double(D - 1)), e) : 0.0;
  if (lane == 0) scale[row] = static_cast<acc_t>(double(d_pow) / (sd + kSalienceStdEps));
}

// The attention logit S_qk = (h_q . h_k) c_q c_k, rounded by two explicit round-to-nearest
// multiplies. row_stats_kernel and column_kernel both call this, and nvcc cannot contract it into
// an FMA with the following "- m_q": the two kernels see the same bits, so the row maximum gives
// exactly exp(0) in both (a contracted logit is off by up to half an ulp of S, which for
// |S| ~ 1e3 and above turns exp(S - m) into inf or 0).
template <typename acc_t>
__device__ __forceinline__ acc_t logit(acc_t dot, acc_t cq, acc_t ck) {
  return cuda::mul_rn(cuda::mul_rn(dot, cq), ck);
}

// Loads element (row, k) of example b's hidden states as acc_t, 0 outside [0, T) x [0, D).
template <typename scalar_t, typename acc_t>
struct RowLoader {
  const scalar_t* hb;
  int64_t T, D, base;
  __device__ __forceinline__ acc_t operator()(int r, int64_t k) const {
    const int64_t t = base + r;
    return (t < T && k < D) ? static_cast<acc_t>(hb[t * D + k]) : acc_t(0);
  }
};

// Per query s: m_s = max_t S_st and 1/l_s, l_s = sum_t exp(S_st - m_s) over unmasked keys t.
// inv_l = 0 marks rows without a valid key (padding queries, examples with one valid token).
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(simt::kThreads)
    row_stats_kernel(const scalar_t* __restrict__ h, const bool* __restrict__ mask,
                     const acc_t* __restrict__ scale, int64_t T, int64_t D, int64_t tiles,
                     acc_t* __restrict__ m_out, acc_t* __restrict__ inv_l_out) {
  __shared__ simt::Stage<acc_t> st;
  const int64_t b = blockIdx.x / tiles;
  const int64_t q0 = (blockIdx.x % tiles) * simt::kTile;
  const scalar_t* hb = h + b * T * D;
  const bool* mb = mask + b * T;
  const acc_t* sb = scale + b * T;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;

  acc_t m[4], l[4], sq[4];
  int64_t q[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    q[i] = q0 + ty + 16 * i;
    sq[i] = q[i] < T ? sb[q[i]] : acc_t(0);
    m[i] = neg_inf<acc_t>();
    l[i] = acc_t(0);
  }
  const RowLoader<scalar_t, acc_t> loadQ{hb, T, D, q0};
  for (int64_t k0 = 0; k0 < T; k0 += simt::kTile) {
    const RowLoader<scalar_t, acc_t> loadK{hb, T, D, k0};
    acc_t acc[4][4];
    simt::zero(acc);
    simt::gemm_nt<acc_t, simt::Contig::K, simt::Contig::K>(acc, D, loadQ, loadK, st);
    acc_t sk[4];
    bool kv[4];
    int64_t key[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      key[j] = k0 + tx + 16 * j;
      kv[j] = key[j] < T && mb[key[j]];
      sk[j] = kv[j] ? sb[key[j]] : acc_t(0);
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      acc_t s[4];
      acc_t tmax = neg_inf<acc_t>();
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        s[j] = (kv[j] && key[j] != q[i]) ? logit(acc[i][j], sq[i], sk[j]) : neg_inf<acc_t>();
        tmax = max(tmax, s[j]);
      }
      // The 16 lanes tx of one ty hold one query row; every lane runs the shuffles.
      const acc_t m_new = max(m[i], cuda::warp_max(tmax, 16));
      acc_t psum = 0;
#pragma unroll
      for (int j = 0; j < 4; ++j) psum += s[j] == neg_inf<acc_t>() ? acc_t(0) : exp(s[j] - m_new);
      psum = cuda::warp_sum(psum, 16);
      const acc_t alpha = m[i] == neg_inf<acc_t>() ? acc_t(0) : exp(m[i] - m_new);
      l[i] = l[i] * alpha + psum;
      m[i] = m_new;
    }
  }
  if (tx == 0) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      if (q[i] >= T) continue;
      // l == 0: no valid key. A NaN l (non-finite hidden states) must propagate, not read as 0.
      const bool ok = mb[q[i]] && !(l[i] == acc_t(0));
      m_out[b * T + q[i]] = ok ? m[i] : acc_t(0);
      inv_l_out[b * T + q[i]] = ok ? acc_t(1) / l[i] : acc_t(0);
    }
  }
}

// out[b, t] = (1 / T_valid) sum_s exp(S_st - m_s) / l_s for valid keys t, 0 for padding.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(simt::kThreads)
    column_kernel(const scalar_t* __restrict__ h, const bool* __restrict__ mask,
                  const acc_t* __restrict__ scale, const acc_t* __restrict__ m_in,
                  const acc_t* __restrict__ inv_l_in, const int64_t* __restrict__ n_valid,
                  int64_t T, int64_t D, int64_t tiles, float* __restrict__ out) {
  __shared__ simt::Stage<acc_t> st;
  __shared__ acc_t red[16][simt::kTile];
  const int64_t b = blockIdx.x / tiles;
  const int64_t k0 = (blockIdx.x % tiles) * simt::kTile;
  const scalar_t* hb = h + b * T * D;
  const bool* mb = mask + b * T;
  const acc_t* sb = scale + b * T;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;

  acc_t sk[4], col[4];
  bool kv[4];
  int64_t key[4];
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    key[j] = k0 + tx + 16 * j;
    kv[j] = key[j] < T && mb[key[j]];
    sk[j] = kv[j] ? sb[key[j]] : acc_t(0);
    col[j] = acc_t(0);
  }
  const RowLoader<scalar_t, acc_t> loadK{hb, T, D, k0};
  for (int64_t q0 = 0; q0 < T; q0 += simt::kTile) {
    const RowLoader<scalar_t, acc_t> loadQ{hb, T, D, q0};
    acc_t acc[4][4];
    simt::zero(acc);
    simt::gemm_nt<acc_t, simt::Contig::K, simt::Contig::K>(acc, D, loadQ, loadK, st);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t q = q0 + ty + 16 * i;
      const acc_t il = q < T ? inv_l_in[b * T + q] : acc_t(0);
      if (il == acc_t(0)) continue;  // padding query / no valid key: contributes nothing
      const acc_t sq = sb[q], mq = m_in[b * T + q];
#pragma unroll
      for (int j = 0; j < 4; ++j)
        if (kv[j] && key[j] != q) col[j] += exp(logit(acc[i][j], sq, sk[j]) - mq) * il;
    }
  }
#pragma unroll
  for (int j = 0; j < 4; ++j) red[ty][tx + 16 * j] = col[j];
  __syncthreads();
  if (threadIdx.x < simt::kTile) {
    const int64_t t = k0 + threadIdx.x;
    if (t < T) {
      acc_t sum = 0;
#pragma unroll
      for (int y = 0; y < 16; ++y) sum += red[y][threadIdx.x];
      out[b * T + t] = mb[t] ? static_cast<float>(sum / acc_t(n_valid[b])) : 0.0f;
    }
  }
}

}  // namespace

at::Tensor token_salience_cuda(const at::Tensor& hidden, const at::Tensor& attention_mask,
                               int64_t key_block) {
  const NoAutocast no_autocast;
  const auto mask = check_token_salience_args(kOp, hidden, attention_mask, key_block);
  const c10::cuda::CUDAGuard guard(hidden.device());
  const int64_t B = hidden.size(0), T = hidden.size(1), D = hidden.size(2);
  if (B == 0 || T == 0 || D == 0) return at::zeros({B, T}, hidden.options().dtype(at::kFloat));
  auto out = cuda::new_output({B, T}, hidden.options().dtype(at::kFloat));
  const auto h = hidden.detach().contiguous();
  const auto acc_dt = hidden.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto acc_opts = hidden.options().dtype(acc_dt);
  auto scale = at::empty({B * T}, acc_opts);
  auto m = at::empty({B * T}, acc_opts);
  auto inv_l = at::empty({B * T}, acc_opts);
  const auto n_valid = mask.sum(1, /*keepdim=*/false, at::kLong).contiguous();
  const int64_t tiles = ceil_div<int64_t>(T, simt::kTile);
  TORCH_CHECK(B * tiles <= std::numeric_limits<int32_t>::max(), kOp, ": too many tiles");
  const auto stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, hidden.scalar_type(), "token_salience_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const scalar_t* hp = h.const_data_ptr<scalar_t>();
        const bool* mp = mask.const_data_ptr<bool>();
        const acc_t d_pow = static_cast<acc_t>(std::pow(double(D), -0.25));
        cuda::launch(scale_kernel<scalar_t, acc_t>, cuda::grid_1d(B * T, 8, kOp, "tokens"), 256,
                     stream, hp, mp, B * T, D, d_pow, scale.mutable_data_ptr<acc_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        cuda::launch(row_stats_kernel<scalar_t, acc_t>, unsigned(B * tiles), simt::kThreads, stream,
                     hp, mp, scale.const_data_ptr<acc_t>(), T, D, tiles,
                     m.mutable_data_ptr<acc_t>(), inv_l.mutable_data_ptr<acc_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        cuda::launch(column_kernel<scalar_t, acc_t>, unsigned(B * tiles), simt::kThreads, stream,
                     hp, mp, scale.const_data_ptr<acc_t>(), m.const_data_ptr<acc_t>(),
                     inv_l.const_data_ptr<acc_t>(), n_valid.const_data_ptr<int64_t>(), T, D, tiles,
                     out.mutable_data_ptr<float>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return out;
}

}  // namespace mta_ext
