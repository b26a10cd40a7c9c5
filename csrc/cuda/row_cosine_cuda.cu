// row_cosine: the CUDA kernels (forward and backward); schema and checks in ops/row_cosine.cpp,
// the CPU kernels in cpu/row_cosine_cpu.cpp. No host sync.
//
// Memory-bound: one warp per row of p (kWarps rows per block), lanes striding over the columns
// (coalesced). Forward: the three sums (p·h_r, ‖p‖², ‖h_r‖²) in double, as on the CPU (the cost
// is the memory traffic), reduced across the warp with xor shuffles; lane 0 writes the row's
// outputs. Backward: the per-row coefficients, then each lane writes its columns of
// a h_r - β p, in double as well (a = g / (max‖p‖ max‖h‖) can leave the float range). rows is
// device memory that the default path never validates (no host sync): a row index outside [0, M)
// reads nothing and gives that row NaN outputs, so wrong metadata is visible and never touches
// memory out of bounds.
#include "cuda/row_cosine_cuda.h"

#include "ops/row_cosine.h"

#include "common/accumulate.h"
#include "common/cuda_utils.cuh"
#include "common/no_autocast.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <limits>

namespace mta_ext {
namespace {

constexpr const char* kFwd = "row_cosine";
constexpr const char* kBwd = "row_cosine_backward";
constexpr int kWarps = 8;  // rows per block
constexpr unsigned kFull = 0xffffffffu;

// The h row of p's row i, or -1 for an index outside [0, M).
__device__ __forceinline__ int64_t h_row(const int64_t* __restrict__ rows, int64_t i, int64_t M) {
  const int64_t r = rows == nullptr ? i : rows[i];
  return (r >= 0 && r < M) ? r : -1;
}

__device__ __forceinline__ double warp_sum(double v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(kFull, v, off);
  return v;
}

template <typename scalar_t, typename acc_t>
__global__ void row_cosine_fwd_kernel(const scalar_t* __restrict__ p,
                                      const scalar_t* __restrict__ h,
                                      const int64_t* __restrict__ rows, int64_t n, int64_t M,
                                      int64_t D, double eps, acc_t* __restrict__ cos,
                                      acc_t* __restrict__ norm_p, acc_t* __restrict__ norm_h) {
  const int64_t i = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (i >= n) return;  // the whole warp: i is per warp
  const int64_t r = h_row(rows, i, M);
  if (r < 0) {
    if (lane == 0) cos[i] = norm_p[i] = norm_h[i] = std::numeric_limits<acc_t>::quiet_NaN();
    return;
  }
  const scalar_t* pr = p + i * D;
  const scalar_t* hr = h + r * D;
  double dot = 0, pp = 0, hh = 0;
  for (int64_t d = lane; d < D; d += 32) {
    const double a = static_cast<double>(pr[d]), b = static_cast<double>(hr[d]);
    dot += a * b;
    pp += a * a;
    hh += b * b;
  }
  dot = warp_sum(dot);
  pp = warp_sum(pp);
  hh = warp_sum(hh);
  if (lane == 0) {
    const double np = sqrt(pp), nh = sqrt(hh);
    norm_p[i] = static_cast<acc_t>(np);
    norm_h[i] = static_cast<acc_t>(nh);
    cos[i] = static_cast<acc_t>(dot / (max(np, eps) * max(nh, eps)));
  }
}

// grad_p = a h_r - β_p p, grad_h_rows = a p - β_h h_r (either may be null: not requested).
template <typename scalar_t, typename acc_t>
__global__ void row_cosine_bwd_kernel(
    const acc_t* __restrict__ g, const scalar_t* __restrict__ p, const scalar_t* __restrict__ h,
    const int64_t* __restrict__ rows, const acc_t* __restrict__ norm_p,
    const acc_t* __restrict__ norm_h, const acc_t* __restrict__ cos, int64_t n, int64_t M,
    int64_t D, double eps, scalar_t* __restrict__ grad_p, scalar_t* __restrict__ grad_h) {
  const int64_t i = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (i >= n) return;
  const int64_t r = h_row(rows, i, M);
  if (r < 0) {
    const auto nan = static_cast<scalar_t>(std::numeric_limits<acc_t>::quiet_NaN());
    for (int64_t d = lane; d < D; d += 32) {
      if (grad_p != nullptr) grad_p[i * D + d] = nan;
      if (grad_h != nullptr) grad_h[i * D + d] = nan;
    }
    return;
  }
  const double np = norm_p[i], nh = norm_h[i], gi = g[i];
  const double cp = max(np, eps), ch = max(nh, eps);
  const double al = gi / (cp * ch), gc = gi * static_cast<double>(cos[i]);
  const double bp = np > eps ? gc / (cp * np) : 0.0;
  const double bh = nh > eps ? gc / (ch * nh) : 0.0;
  const scalar_t* pr = p + i * D;
  const scalar_t* hr = h + r * D;
  for (int64_t d = lane; d < D; d += 32) {
    const double a = static_cast<double>(pr[d]), b = static_cast<double>(hr[d]);
    if (grad_p != nullptr) grad_p[i * D + d] = static_cast<scalar_t>(al * b - bp * a);
    if (grad_h != nullptr) grad_h[i * D + d] = static_cast<scalar_t>(al * a - bh * b);
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> row_cosine_cuda(
    const at::Tensor& p_in, const at::Tensor& h_in, const std::optional<at::Tensor>& rows_in,
    double eps) {
  const NoAutocast no_autocast;
  const auto a = prepare_row_cosine(kFwd, p_in, h_in, rows_in, eps);
  const c10::cuda::CUDAGuard guard(a.p.device());
  const int64_t n = a.p.size(0), D = a.p.size(1), M = a.h.size(0);
  const auto opts = a.p.options().dtype(row_cosine_acc(a.p.scalar_type()));
  auto cos = cuda::new_output({n}, opts), np = cuda::new_output({n}, opts),
       nh = cuda::new_output({n}, opts);
  if (n == 0) return {cos, np, nh};
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t* rows = a.rows.defined() ? a.rows.const_data_ptr<int64_t>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.p.scalar_type(), kFwd, [&] {
    using acc_t = acc_type<scalar_t>;
    cuda::launch(row_cosine_fwd_kernel<scalar_t, acc_t>, cuda::grid_1d(n, kWarps, kFwd, "rows"),
                 kWarps * 32, stream, a.p.const_data_ptr<scalar_t>(),
                 a.h.const_data_ptr<scalar_t>(), rows, n, M, D, eps, cos.mutable_data_ptr<acc_t>(),
                 np.mutable_data_ptr<acc_t>(), nh.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {cos, np, nh};
}

std::tuple<at::Tensor, at::Tensor> row_cosine_backward_cuda(
    const at::Tensor& grad_cos, const at::Tensor& p_in, const at::Tensor& h_in,
    const std::optional<at::Tensor>& rows_in, const at::Tensor& norm_p, const at::Tensor& norm_h,
    const at::Tensor& cos, double eps, std::array<bool, 2> output_mask) {
  const NoAutocast no_autocast;
  const auto b =
      prepare_row_cosine_backward(kBwd, grad_cos, p_in, h_in, rows_in, norm_p, norm_h, cos, eps);
  const auto& a = b.x;
  const auto &g = b.grad_cos, &n_p = b.norm_p, &n_h = b.norm_h, &c = b.cos;
  const c10::cuda::CUDAGuard guard(a.p.device());
  const int64_t n = a.p.size(0), D = a.p.size(1), M = a.h.size(0);
  auto gp = cuda::new_output({output_mask[0] ? n : 0, D}, a.p.options());
  auto gh = cuda::new_output({output_mask[1] ? n : 0, D}, a.p.options());
  if (n == 0 || D == 0 || !(output_mask[0] || output_mask[1])) return {gp, gh};
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t* rows = a.rows.defined() ? a.rows.const_data_ptr<int64_t>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.p.scalar_type(), kBwd, [&] {
    using acc_t = acc_type<scalar_t>;
    cuda::launch(row_cosine_bwd_kernel<scalar_t, acc_t>, cuda::grid_1d(n, kWarps, kBwd, "rows"),
                 kWarps * 32, stream, g.const_data_ptr<acc_t>(), a.p.const_data_ptr<scalar_t>(),
                 a.h.const_data_ptr<scalar_t>(), rows, n_p.const_data_ptr<acc_t>(),
                 n_h.const_data_ptr<acc_t>(), c.const_data_ptr<acc_t>(), n, M, D, eps,
                 output_mask[0] ? gp.mutable_data_ptr<scalar_t>() : nullptr,
                 output_mask[1] ? gh.mutable_data_ptr<scalar_t>() : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {gp, gh};
}

}  // namespace mta_ext
