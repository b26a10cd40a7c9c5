// Small helpers shared by the CUDA kernels (csrc/cuda/*.cu), and the one place that decides
// what "CUDA" means for them: the real toolkit (nvcc), or the SIMT backend's implementation of
// the same subset for the host compiler (MTA_SIMT: simt/cuda_shim.h), which runs the same
// kernel sources on the CPU. Kernels are launched through cuda::launch, never with <<<>>>, so
// both builds launch them the same way.
//
// Only c10/cuda headers: this machine's toolkit has no cuBLAS headers, so ATen/cuda/CUDAContext.h
// cannot be included (the CI toolkit lacks them).
#pragma once

#include <ATen/ATen.h>

#ifdef MTA_SIMT
#include "simt/cuda_shim.h"
#else
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>
#endif

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <utility>

namespace mta_ext::cuda {

template <typename T>
C10_HOST_DEVICE constexpr T ceil_div(T a, T b) {
  return (a + b - 1) / b;
}

// MTA_CUDA_POISON=1 makes every op allocate its outputs filled with NaN instead of
// uninitialised, so a test that reads an element no kernel wrote sees NaN (the kernels are meant
// to write every output element). Read at every call (a getenv is cheap next to a launch), so a
// test can switch it on and off inside one process.
inline bool poison_outputs() {
  const char* v = std::getenv("MTA_CUDA_POISON");
  return v != nullptr && v[0] != '\0' && v[0] != '0';
}

inline at::Tensor new_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  if (poison_outputs() && at::isFloatingType(c10::typeMetaToScalarType(options.dtype())))
    return at::full(sizes, std::numeric_limits<double>::quiet_NaN(), options);
  return at::empty(sizes, options);
}

// Launches kernel<<<grid, block, 0, stream>>>(args...) (the SIMT backend: runs it on the CPU).
template <typename... Params, typename... Args>
inline void launch(void (*kernel)(Params...), dim3 grid, dim3 block, cudaStream_t stream,
                   Args&&... args) {
#ifdef MTA_SIMT
  (void)stream;
  simt_rt::LaunchCtx<Params...> ctx{kernel, {std::forward<Args>(args)...}};
  simt_rt::launch(grid, block, &simt_rt::LaunchCtx<Params...>::run, &ctx);
#else
  // clang-format reads the launch brackets as template closers ("> > >"), which nvcc rejects.
  // clang-format off
  kernel<<<grid, block, 0, stream>>>(std::forward<Args>(args)...);
  // clang-format on
#endif
}

// Compute capability major of the current device (cached per device index). The cache is
// written and read with relaxed atomics: two host threads may both query the driver the first
// time and store the same value, but no thread ever reads a torn or racy int.
inline int device_major(int device) {
#ifdef MTA_SIMT
  (void)device;
  return simt_rt::sm_major();  // configurable per call (mta_ext._simt.enabled(sm=...))
#endif
  static std::atomic<int> cache[64] = {};
  if (device < 0 || device >= 64) device = 0;
  int major = cache[device].load(std::memory_order_relaxed);
  if (major == 0) {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
    cache[device].store(major, std::memory_order_relaxed);
  }
  return major;
}

// A 1-D grid of ceil(n / per_block) blocks, checked against CUDA's grid.x limit (2^31 - 1)
// instead of silently truncating in an unsigned cast.
inline unsigned grid_1d(int64_t n, int64_t per_block, const char* op, const char* what) {
  const int64_t blocks = ceil_div<int64_t>(n, per_block);
  TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), op, ": too many ", what, " (", n,
              ") for one CUDA launch");
  return unsigned(blocks);
}

// Products rounded on their own (round to nearest): nvcc never contracts __fmul_rn / __dmul_rn
// into an FMA with a neighbouring add, so a value computed this way has the same bits wherever
// it is computed (e.g. an attention logit in two kernels, or cS and cT of equal inputs).
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }

// A V-wide vector of T loaded/stored with one instruction (V * sizeof(T) == 16 for the fast
// path; V == 1 is the scalar fallback for unaligned pointers or rows).
template <typename T, int V>
struct alignas(sizeof(T) * V) Vec {
  T v[V];
};

// True when every row of a [rows, D] contiguous tensor of T starts on a 16-byte boundary.
template <typename T>
inline bool rows_16b_aligned(const void* p, int64_t D) {
  return reinterpret_cast<std::uintptr_t>(p) % 16 == 0 && (D * int64_t(sizeof(T))) % 16 == 0;
}

// Deterministic warp sum (fixed xor tree over `width` lanes, width a power of two <= 32).
template <typename T>
__device__ __forceinline__ T warp_sum(T v, int width = 32) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1)
    if (o < width) v += __shfl_xor_sync(0xffffffffu, v, o, width);
  return v;
}

template <typename T>
__device__ __forceinline__ T warp_max(T v, int width = 32) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1)
    if (o < width) v = max(v, __shfl_xor_sync(0xffffffffu, v, o, width));
  return v;
}

}  // namespace mta_ext::cuda
