// segment_pool: the CUDA kernels (forward and backward); schema and checks in
// ops/segment_pool.cpp, the CPU kernels in cpu/segment_pool_cpu.cpp. No host sync: the CSR size
// (num_incidences) comes from the host (the layout), else the raw-op fallback computes it.
//
// Memory-bound. Forward: one output row per unit, a 2-D block of (columns x units) so narrow
// rows still fill a block; each thread owns V = 16 / sizeof(T) consecutive columns and streams
// the unit's token rows with 16-byte loads, 4 rows in flight, fp32 accumulation (fp64 for fp64).
// Rows whose start is not 16-byte aligned (odd D, offset views) take the V = 1 path.
//
// Backward is token-centric and deterministic without float atomics:
//   1. per unit: wmax_k and inv_k = 1 / max(sum w / wmax_k, 1e-5 / wmax_k) (the same loops as the
//      forward, so the same bits)
//      and +1/-1 at start/end in an integer difference array (integer atomics: order-free);
//   2. two integer prefix sums: coverage per token, then the CSR row pointer (its total must be
//      the host's num_incidences P; every CSR access is clamped to P, so a wrong P cannot cause an
//      out-of-bounds access, and the gather sees the true total row_ptr[M] != P and writes NaN:
//      wrong metadata is visible without a host sync; the debug mode rejects it);
//   3. fill the CSR with integer atomic cursors (any order), then sort each token's short list
//      by unit index, so every token sums its units in increasing unit order;
//   4. gather: grad_hidden[t] = sum_{k ∋ t} (w_t / wmax_k) inv_k grad_out[k], one writer per row.
// Every kernel clamps a unit's range into [0, M] (unit_range): ranges that were never validated
// (a raw-op caller on a device, outside the debug mode) read and write inside the buffers.
#include "cuda/segment_pool_cuda.h"

#include "ops/segment_pool.h"

#include "common/accumulate.h"
#include "common/checks.h"
#include "common/cuda_utils.cuh"
#include "common/no_autocast.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <algorithm>
#include <limits>

namespace mta_ext {
namespace {

using cuda::ceil_div;
using cuda::Vec;

constexpr const char* kFwd = "segment_pool";
constexpr const char* kBwd = "segment_pool_backward";
constexpr int kBlock = 128;  // threads per block of the row kernels

// The unit's largest weight (1 without weights) and 1 / max(sum_t w_t / wmax, 1e-5 / wmax),
// summed in token order (forward and backward share it; see unit_inv_denominator).
template <typename acc_t>
struct UnitDen {
  acc_t wmax, inv;
};
template <typename acc_t>
__device__ __forceinline__ UnitDen<acc_t> unit_denominator(const acc_t* __restrict__ w, int64_t s,
                                                           int64_t e) {
  if (w == nullptr) return {acc_t(1), unit_inv_denominator(static_cast<acc_t>(e - s), acc_t(1))};
  acc_t wmax = 0;
  for (int64_t t = s; t < e; ++t) wmax = max(wmax, w[t]);
  acc_t wsum = 0;
  for (int64_t t = s; t < e; ++t) wsum += normalised_weight(w[t], wmax);
  return {wmax, unit_inv_denominator(wsum, wmax)};
}

// Unit k's token range [s, e), clamped into 0 <= s <= e <= M. Valid ranges are unchanged.
__device__ __forceinline__ void unit_range(const int64_t* __restrict__ ranges, int64_t k, int64_t M,
                                           int64_t& s, int64_t& e) {
  s = ranges[2 * k];
  e = ranges[2 * k + 1];
  s = s < 0 ? 0 : (s > M ? M : s);
  e = e < s ? s : (e > M ? M : e);
}

// One V-wide row segment from global memory as ONE vector load (ld.global.nc.v4 / .v2 for
// 16 bytes) into a register copy. Dereferencing the reinterpret_cast pointer straight into a
// `const Vec&` parameter lets nvcc split it into V narrow loads (8 x u16 for bf16).
template <typename scalar_t, int V>
__device__ __forceinline__ Vec<scalar_t, V> load_vec(const scalar_t* __restrict__ p) {
  Vec<scalar_t, V> v;
  if constexpr (sizeof(Vec<scalar_t, V>) == 16) {
    const uint4 raw = __ldg(reinterpret_cast<const uint4*>(p));
    static_assert(sizeof(raw) == sizeof(v));
    __builtin_memcpy(&v, &raw, 16);
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) v.v[i] = p[i];
  }
  return v;
}

template <typename scalar_t, typename acc_t, int V>
__device__ __forceinline__ void fma_vec(acc_t (&acc)[V], const Vec<scalar_t, V>& x, acc_t a) {
#pragma unroll
  for (int i = 0; i < V; ++i) acc[i] += a * static_cast<acc_t>(x.v[i]);
}

template <typename scalar_t, typename acc_t, int V>
__device__ __forceinline__ void store_vec(scalar_t* __restrict__ dst, const acc_t (&acc)[V],
                                          acc_t a) {
  Vec<scalar_t, V> o;
#pragma unroll
  for (int i = 0; i < V; ++i) o.v[i] = static_cast<scalar_t>(a * acc[i]);
  *reinterpret_cast<Vec<scalar_t, V>*>(dst) = o;
}

// out[k, c*V : c*V+V] for unit k = blockIdx.x * blockDim.y + threadIdx.y, vectors c strided.
template <typename scalar_t, typename acc_t, int V>
__global__ void __launch_bounds__(kBlock)
    pool_fwd_kernel(const scalar_t* __restrict__ h, const int64_t* __restrict__ ranges,
                    const acc_t* __restrict__ w, scalar_t* __restrict__ out, int64_t N, int64_t M,
                    int64_t D) {
  using VT = Vec<scalar_t, V>;
  const int64_t k = int64_t(blockIdx.x) * blockDim.y + threadIdx.y;
  if (k >= N) return;
  int64_t s, e;
  unit_range(ranges, k, M, s, e);
  const UnitDen<acc_t> den = unit_denominator(w, s, e);
  // w_t / wmax (1 without weights): no product w_t h_t overflows.
  auto wt = [&](int64_t t) { return w ? normalised_weight(w[t], den.wmax) : acc_t(1); };
  const int64_t nvec = D / V;
  for (int64_t c = int64_t(blockIdx.y) * blockDim.x + threadIdx.x; c < nvec;
       c += int64_t(gridDim.y) * blockDim.x) {
    const scalar_t* col = h + c * V;
    acc_t acc[V];
#pragma unroll
    for (int i = 0; i < V; ++i) acc[i] = acc_t(0);
    int64_t t = s;
    // Four independent 16-byte loads in flight, then the FMAs in token order.
    for (; t + 4 <= e; t += 4) {
      const VT x0 = load_vec<scalar_t, V>(col + (t + 0) * D);
      const VT x1 = load_vec<scalar_t, V>(col + (t + 1) * D);
      const VT x2 = load_vec<scalar_t, V>(col + (t + 2) * D);
      const VT x3 = load_vec<scalar_t, V>(col + (t + 3) * D);
      fma_vec(acc, x0, wt(t + 0));
      fma_vec(acc, x1, wt(t + 1));
      fma_vec(acc, x2, wt(t + 2));
      fma_vec(acc, x3, wt(t + 3));
    }
    for (; t < e; ++t) {
      const VT x = load_vec<scalar_t, V>(col + t * D);
      fma_vec(acc, x, wt(t));
    }
    store_vec(out + k * D + c * V, acc, den.inv);
  }
}

// Unit pass of the backward: wmax_k, inv_k and the coverage difference array.
template <typename acc_t>
__global__ void unit_prep_kernel(const int64_t* __restrict__ ranges, const acc_t* __restrict__ w,
                                 int64_t N, int64_t M, acc_t* __restrict__ inv,
                                 acc_t* __restrict__ wmax, int* __restrict__ diff) {
  const int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k >= N) return;
  int64_t s, e;
  unit_range(ranges, k, M, s, e);
  const UnitDen<acc_t> den = unit_denominator(w, s, e);
  inv[k] = den.inv;
  wmax[k] = den.wmax;
  if (s < e) {
    atomicAdd(diff + s, 1);
    atomicAdd(diff + e, -1);
  }
}

// Scatter unit k into the CSR list of each of its tokens (slot order arbitrary, fixed by sort).
__global__ void csr_fill_kernel(const int64_t* __restrict__ ranges, int64_t N, int64_t M,
                                const int64_t* __restrict__ row_ptr, int64_t P,
                                int* __restrict__ cursor, int* __restrict__ units) {
  const int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k >= N) return;
  int64_t s, e;
  unit_range(ranges, k, M, s, e);
  for (int64_t t = s; t < e; ++t) {
    const int64_t slot = row_ptr[t] + atomicAdd(cursor + t, 1);
    if (slot < P) units[slot] = int(k);
  }
}

// Insertion sort of each token's unit list (lists hold the overlap depth: a handful of units).
__global__ void csr_sort_kernel(const int64_t* __restrict__ row_ptr, int64_t M, int64_t P,
                                int* __restrict__ units) {
  const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= M) return;
  const int64_t j0 = min(row_ptr[t], P), j1 = min(row_ptr[t + 1], P);
  for (int64_t j = j0 + 1; j < j1; ++j) {
    const int v = units[j];
    int64_t i = j - 1;
    while (i >= j0 && units[i] > v) {
      units[i + 1] = units[i];
      --i;
    }
    units[i + 1] = v;
  }
}

// grad_hidden[t] = sum_j f(t, k_j) grad_out[k_j], k_j = units[j] over token t's sorted list,
// f(t, k) = (w_t / wmax_k) inv_k (<= 1; inv_k without weights), as the CPU kernel. A host P that
// differs from the true total row_ptr[M] (wrong metadata) makes every row NaN.
template <typename scalar_t, typename acc_t, int V>
__global__ void __launch_bounds__(kBlock)
    pool_bwd_gather_kernel(const scalar_t* __restrict__ g, const int64_t* __restrict__ row_ptr,
                           int64_t P, const int* __restrict__ units, const acc_t* __restrict__ inv,
                           const acc_t* __restrict__ wmax, const acc_t* __restrict__ w,
                           scalar_t* __restrict__ gh, int64_t M, int64_t D) {
  using VT = Vec<scalar_t, V>;
  const int64_t t = int64_t(blockIdx.x) * blockDim.y + threadIdx.y;
  if (t >= M) return;
  const int64_t j0 = min(row_ptr[t], P), j1 = min(row_ptr[t + 1], P);
  const bool wrong_p = __ldg(row_ptr + M) != P;
  auto f = [&](int k) { return w ? normalised_weight(w[t], wmax[k]) * inv[k] : inv[k]; };
  const int64_t nvec = D / V;
  for (int64_t c = int64_t(blockIdx.y) * blockDim.x + threadIdx.x; c < nvec;
       c += int64_t(gridDim.y) * blockDim.x) {
    const scalar_t* col = g + c * V;
    acc_t acc[V];
#pragma unroll
    for (int i = 0; i < V; ++i) acc[i] = acc_t(0);
    int64_t j = j0;
    for (; j + 2 <= j1; j += 2) {
      const int k0 = units[j], k1 = units[j + 1];
      const VT x0 = load_vec<scalar_t, V>(col + int64_t(k0) * D);
      const VT x1 = load_vec<scalar_t, V>(col + int64_t(k1) * D);
      fma_vec(acc, x0, f(k0));
      fma_vec(acc, x1, f(k1));
    }
    if (j < j1) {
      const int k = units[j];
      const VT x = load_vec<scalar_t, V>(col + int64_t(k) * D);
      fma_vec(acc, x, f(k));
    }
    store_vec(gh + t * D + c * V, acc,
              wrong_p ? std::numeric_limits<acc_t>::quiet_NaN() : acc_t(1));
  }
}

// Block shape for [rows, D] row kernels: columns (in vectors) x rows, kBlock threads.
struct RowLaunch {
  dim3 grid, block;
};
inline RowLaunch row_launch(int64_t rows, int64_t nvec) {
  int tpr = 1;  // threads per row: the smallest power of two covering nvec, at most kBlock
  while (tpr < kBlock && tpr < nvec) tpr *= 2;
  const int rpb = kBlock / tpr;  // rows per block
  const int64_t gx = ceil_div<int64_t>(rows, rpb);
  TORCH_CHECK(gx <= std::numeric_limits<int32_t>::max(), "segment_pool: too many rows (", rows,
              ") for one CUDA launch");
  const int64_t gy = std::min<int64_t>(ceil_div<int64_t>(nvec, tpr), 65535);
  return {dim3(unsigned(gx), unsigned(gy)), dim3(unsigned(tpr), unsigned(rpb))};
}

template <typename scalar_t>
constexpr int vec_width() {
  return 16 / int(sizeof(scalar_t));
}

}  // namespace

at::Tensor segment_pool_cuda(const at::Tensor& hidden, const at::Tensor& ranges,
                             const std::optional<at::Tensor>& weights,
                             std::optional<int64_t> num_incidences) {
  const NoAutocast no_autocast;
  check_float(kFwd, "hidden", hidden);
  check_dim(kFwd, "hidden", hidden, 2, "[M, D]");
  const c10::cuda::CUDAGuard guard(hidden.device());
  const int64_t M = hidden.size(0), D = hidden.size(1);
  auto a = prepare_segment_pool(kFwd, hidden, ranges, weights, M, "hidden.size(0)");
  // The forward does not need it; given, it is checked in the debug mode (never computed).
  if (num_incidences.has_value()) num_incidences_of(kFwd, a.ranges, num_incidences);
  const int64_t N = a.ranges.size(0);
  auto out = cuda::new_output({N, D}, hidden.options());
  if (N == 0 || D == 0) return out;
  const auto stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, hidden.scalar_type(), "segment_pool_cuda", [&] {
        using acc_t = acc_type<scalar_t>;
        constexpr int V = vec_width<scalar_t>();
        const scalar_t* h = a.hidden.const_data_ptr<scalar_t>();
        const int64_t* r = a.ranges.const_data_ptr<int64_t>();
        const acc_t* w = a.weights ? a.weights->const_data_ptr<acc_t>() : nullptr;
        scalar_t* o = out.mutable_data_ptr<scalar_t>();
        if (cuda::rows_16b_aligned<scalar_t>(h, D) && cuda::rows_16b_aligned<scalar_t>(o, D)) {
          const auto L = row_launch(N, D / V);
          cuda::launch(pool_fwd_kernel<scalar_t, acc_t, V>, L.grid, L.block, stream, h, r, w, o, N,
                       M, D);
        } else {
          const auto L = row_launch(N, D);
          cuda::launch(pool_fwd_kernel<scalar_t, acc_t, 1>, L.grid, L.block, stream, h, r, w, o, N,
                       M, D);
        }
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return out;
}

at::Tensor segment_pool_backward_cuda(const at::Tensor& grad_out, const at::Tensor& ranges,
                                      const std::optional<at::Tensor>& weights, int64_t num_rows,
                                      std::optional<int64_t> num_incidences) {
  const NoAutocast no_autocast;
  check_float(kBwd, "grad_out", grad_out);
  check_dim(kBwd, "grad_out", grad_out, 2, "[N, D]");
  TORCH_CHECK_VALUE(num_rows >= 0, kBwd, ": num_rows must be >= 0, got ", num_rows);
  const c10::cuda::CUDAGuard guard(grad_out.device());
  auto a = prepare_segment_pool(kBwd, grad_out, ranges, weights, num_rows, "num_rows");
  const int64_t N = a.ranges.size(0), D = grad_out.size(1), M = num_rows;
  TORCH_CHECK_VALUE(grad_out.size(0) == N, kBwd, ": grad_out has ", grad_out.size(0),
                    " rows but ranges has ", N, " units");
  TORCH_CHECK_VALUE(N <= std::numeric_limits<int32_t>::max(), kBwd, ": at most 2^31-1 units, got ",
                    N);
  if (M == 0 || D == 0) return cuda::new_output({M, D}, grad_out.options());
  if (N == 0) return at::zeros({M, D}, grad_out.options());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const auto acc_dt = grad_out.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto idx_opts = grad_out.options().dtype(at::kInt);
  const int64_t* r = a.ranges.const_data_ptr<int64_t>();

  // 1. inv_k and the coverage difference array.
  auto inv = at::empty({N}, grad_out.options().dtype(acc_dt));
  auto wmax = at::empty({N}, grad_out.options().dtype(acc_dt));
  auto diff = at::zeros({M + 1}, idx_opts);
  AT_DISPATCH_FLOATING_TYPES(acc_dt, "segment_pool_unit_prep", [&] {
    const scalar_t* w = a.weights ? a.weights->const_data_ptr<scalar_t>() : nullptr;
    cuda::launch(unit_prep_kernel<scalar_t>, cuda::grid_1d(N, 256, kBwd, "units"), 256, stream, r,
                 w, N, M, inv.mutable_data_ptr<scalar_t>(), wmax.mutable_data_ptr<scalar_t>(),
                 diff.mutable_data_ptr<int>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  // 2. coverage per token and the CSR row pointer (integer scans: exact, order-free).
  auto row_ptr = at::zeros({M + 1}, grad_out.options().dtype(at::kLong));
  row_ptr.slice(0, 1).copy_(diff.slice(0, 0, M).cumsum(0, at::kLong).cumsum(0));
  const int64_t P = num_incidences_of(kBwd, a.ranges, num_incidences);  // host metadata
  // 3. fill and sort the token -> units lists.
  auto units = at::empty({std::max<int64_t>(P, 1)}, idx_opts);
  if (P > 0) {
    auto cursor = at::zeros({M}, idx_opts);
    cuda::launch(csr_fill_kernel, cuda::grid_1d(N, 256, kBwd, "units"), 256, stream, r, N, M,
                 row_ptr.const_data_ptr<int64_t>(), P, cursor.mutable_data_ptr<int>(),
                 units.mutable_data_ptr<int>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    cuda::launch(csr_sort_kernel, cuda::grid_1d(M, 256, kBwd, "rows"), 256, stream,
                 row_ptr.const_data_ptr<int64_t>(), M, P, units.mutable_data_ptr<int>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  // 4. gather.
  auto grad_hidden = cuda::new_output({M, D}, grad_out.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, grad_out.scalar_type(), "segment_pool_backward_cuda", [&] {
        using acc_t = acc_type<scalar_t>;
        constexpr int V = vec_width<scalar_t>();
        const scalar_t* g = a.hidden.const_data_ptr<scalar_t>();
        const acc_t* w = a.weights ? a.weights->const_data_ptr<acc_t>() : nullptr;
        scalar_t* gh = grad_hidden.mutable_data_ptr<scalar_t>();
        const int64_t* rp = row_ptr.const_data_ptr<int64_t>();
        const int* un = units.const_data_ptr<int>();
        const acc_t* iv = inv.const_data_ptr<acc_t>();
        const acc_t* wm = wmax.const_data_ptr<acc_t>();
        if (cuda::rows_16b_aligned<scalar_t>(g, D) && cuda::rows_16b_aligned<scalar_t>(gh, D)) {
          const auto L = row_launch(M, D / V);
          cuda::launch(pool_bwd_gather_kernel<scalar_t, acc_t, V>, L.grid, L.block, stream, g, rp,
                       P, un, iv, wm, w, gh, M, D);
        } else {
          const auto L = row_launch(M, D);
          cuda::launch(pool_bwd_gather_kernel<scalar_t, acc_t, 1>, L.grid, L.block, stream, g, rp,
                       P, un, iv, wm, w, gh, M, D);
        }
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return grad_hidden;
}

}  // namespace mta_ext
