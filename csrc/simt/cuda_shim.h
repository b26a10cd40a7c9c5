// The part of CUDA that csrc/cuda uses, implemented for the host compiler, so the SAME kernel
// sources run on the CPU (the SIMT backend; docs/DESIGN.md, "The SIMT backend"). Included
// instead of the CUDA headers when MTA_SIMT is defined (common/cuda_utils.cuh).
//
// Model: a launch runs its blocks one after another on a host thread (blocks of one launch are
// spread over the OpenMP threads); the threads of a block are cooperative fibers that run until
// they reach a barrier (__syncthreads), a warp collective (__shfl_*_sync, votes, __syncwarp,
// the wmma *_sync calls) or their end. A barrier releases when every live thread of the block
// has reached it; a warp collective completes, all lanes at once, when every lane of its mask
// has reached it. `__shared__` variables are function-local `static thread_local`: one copy per
// host thread, i.e. per running block. See simt/runtime.cpp for the scheduler and its checks.
#pragma once

#include <c10/core/Device.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

// ---------------------------------------------------------------- qualifiers
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __shared__ static thread_local
#define __align__(n) __attribute__((aligned(n)))

// ---------------------------------------------------------------- vector types
struct uint3 {
  unsigned x = 0, y = 0, z = 0;
};
struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }

// 16-bit float storage types of cuda_bf16.h / cuda_fp16.h (the kernels only reinterpret
// pointers to them for wmma).
struct __nv_bfloat16 {
  uint16_t x;
};
struct __half {
  uint16_t x;
};

// ---------------------------------------------------------------- runtime API subset
using cudaStream_t = struct CUstream_st*;
enum cudaError_t { cudaSuccess = 0 };
enum cudaDeviceAttr { cudaDevAttrComputeCapabilityMajor = 75 };

namespace mta_ext::simt_rt {

// Per-fiber and per-block state the built-ins read (runtime.cpp).
struct Fiber;
extern thread_local Fiber* t_fiber;
extern thread_local uint3 t_block_idx;
extern thread_local dim3 t_block_dim;
extern thread_local dim3 t_grid_dim;
const uint3& thread_idx();

// The compute capability the emulated device reports (mta_ext._simt.enabled(sm=...)).
int sm_major();

// One launch: `body(ctx)` runs once per thread of every block of `grid`.
void launch(dim3 grid, dim3 block, void (*body)(void*), void* ctx);

// Barriers and warp collectives (runtime.cpp).
void syncthreads();
enum class Coll : int { kSyncWarp, kShflIdx, kShflXor, kShflDown, kShflUp, kBallot, kAny, kAll };
uint64_t warp_collective(Coll kind, unsigned mask, uint64_t value, int arg, int width);
[[noreturn]] void trap(const char* why);

template <typename T>
inline uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>);
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
template <typename T>
inline T from_bits(uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}

}  // namespace mta_ext::simt_rt

inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr, int) {
  *value = mta_ext::simt_rt::sm_major();
  return cudaSuccess;
}

#define threadIdx (::mta_ext::simt_rt::thread_idx())
#define blockIdx (static_cast<const uint3&>(::mta_ext::simt_rt::t_block_idx))
#define blockDim (static_cast<const dim3&>(::mta_ext::simt_rt::t_block_dim))
#define gridDim (static_cast<const dim3&>(::mta_ext::simt_rt::t_grid_dim))

// ---------------------------------------------------------------- c10/cuda subset
namespace c10::cuda {
struct CUDAGuard {
  explicit CUDAGuard(const c10::Device&) {}
};
struct CUDAStream {
  operator cudaStream_t() const { return nullptr; }
};
inline CUDAStream getCurrentCUDAStream() { return {}; }
}  // namespace c10::cuda
#define C10_CUDA_KERNEL_LAUNCH_CHECK() \
  do {                                 \
  } while (0)
#define C10_CUDA_CHECK(expr) (void)(expr)

// ---------------------------------------------------------------- built-in functions
inline void __syncthreads() { mta_ext::simt_rt::syncthreads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  mta_ext::simt_rt::warp_collective(mta_ext::simt_rt::Coll::kSyncWarp, mask, 0, 0, 32);
}
[[noreturn]] inline void __trap() { mta_ext::simt_rt::trap("__trap() called by a kernel"); }

#define MTA_SIMT_SHFL(name, kind)                                                   \
  template <typename T>                                                             \
  inline T name(unsigned mask, T v, int arg, int width = 32) {                      \
    using namespace mta_ext::simt_rt;                                               \
    return from_bits<T>(warp_collective(Coll::kind, mask, to_bits(v), arg, width)); \
  }
MTA_SIMT_SHFL(__shfl_sync, kShflIdx)
MTA_SIMT_SHFL(__shfl_xor_sync, kShflXor)
MTA_SIMT_SHFL(__shfl_down_sync, kShflDown)
MTA_SIMT_SHFL(__shfl_up_sync, kShflUp)
#undef MTA_SIMT_SHFL
inline unsigned __ballot_sync(unsigned mask, int pred) {
  using namespace mta_ext::simt_rt;
  return unsigned(warp_collective(Coll::kBallot, mask, pred != 0, 0, 32));
}
inline int __any_sync(unsigned mask, int pred) {
  using namespace mta_ext::simt_rt;
  return int(warp_collective(Coll::kAny, mask, pred != 0, 0, 32));
}
inline int __all_sync(unsigned mask, int pred) {
  using namespace mta_ext::simt_rt;
  return int(warp_collective(Coll::kAll, mask, pred != 0, 0, 32));
}

// Products rounded on their own: the simt sources are compiled with -ffp-contract=off, so no
// product is ever fused into an FMA (the nvcc semantics of __fmul_rn / __dmul_rn).
inline float __fmul_rn(float a, float b) { return a * b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline double __dadd_rn(double a, double b) { return a + b; }
template <typename T>
inline T __ldg(const T* p) {
  return *p;
}
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __bfloat162float(__nv_bfloat16 v) {
  return static_cast<float>(c10::BFloat16(v.x, c10::BFloat16::from_bits()));
}
inline float __half2float(__half v) {
  return static_cast<float>(c10::Half(v.x, c10::Half::from_bits()));
}

// Device-side max/min of CUDA's math library (same-type arguments, as the kernels use them).
#define MTA_SIMT_MINMAX(T)                         \
  inline T max(T a, T b) { return a < b ? b : a; } \
  inline T min(T a, T b) { return b < a ? b : a; }
MTA_SIMT_MINMAX(int)
MTA_SIMT_MINMAX(unsigned)
MTA_SIMT_MINMAX(long)
MTA_SIMT_MINMAX(long long)
MTA_SIMT_MINMAX(unsigned long)
MTA_SIMT_MINMAX(unsigned long long)
#undef MTA_SIMT_MINMAX
// fmaxf/fminf semantics for floats (a NaN operand yields the other one), as CUDA's max(float).
inline float max(float a, float b) { return std::fmax(a, b); }
inline float min(float a, float b) { return std::fmin(a, b); }
inline double max(double a, double b) { return std::fmax(a, b); }
inline double min(double a, double b) { return std::fmin(a, b); }
using std::abs;
using std::exp;
using std::frexp;
using std::isfinite;
using std::ldexp;
using std::log;
using std::sqrt;

// Integer atomics (the kernels use no float atomics): real atomics, since the blocks of one
// launch may run on several host threads.
inline int atomicAdd(int* p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
inline unsigned atomicAdd(unsigned* p, unsigned v) {
  return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
  return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}

// ---------------------------------------------------------------- launches
namespace mta_ext::simt_rt {

// The kernel and its arguments, copied and converted as a real launch does (by value).
template <typename... P>
struct LaunchCtx {
  void (*kernel)(P...);
  std::tuple<std::decay_t<P>...> args;
  static void run(void* self) {
    auto* c = static_cast<LaunchCtx*>(self);
    std::apply(c->kernel, c->args);
  }
};

}  // namespace mta_ext::simt_rt

#include "simt/wmma.h"
