// Test-only kernels of the SIMT backend itself (python_tests/test_simt_backend.py): each one
// exercises one part of the execution model -- barriers, warp collectives, wmma, the checks for
// what a GPU leaves undefined -- so that the backend is shown to catch what it claims to catch.
// Compiled only into SIMT builds (like csrc/cuda, as C++ against simt/cuda_shim.h).
#include "common/cuda_utils.cuh"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstring>
#include <string>

namespace mta_ext {
namespace {

// out[t] = t's mirror thread's value, exchanged through shared memory, with or without the
// barrier between the writes and the reads.
template <bool kSync>
__global__ void reverse_kernel(int* out) {
  __shared__ int buf[64];
  const int t = threadIdx.x;
  buf[t] = 1000 * blockIdx.x + t;
  if (kSync) __syncthreads();
  out[blockIdx.x * 64 + t] = buf[63 - t];
  if (kSync) __syncthreads();
  buf[t] = -1;  // leaves a stale value for the next block or launch
}

// Every thread writes its index to one shared slot: the last writer wins, which depends on the
// order the threads run in (a deliberate race).
__global__ void last_writer_kernel(int* out) {
  __shared__ int slot;
  slot = threadIdx.x;
  __syncthreads();
  if (threadIdx.x == 0) out[blockIdx.x] = slot;
}

// Warp collectives: out[lane] = [sum over 32, sum over the lane's 16, ballot of odd lanes,
// lane 5's value, value of lane + 3 (own value past the end), any(lane == 7), all(lane < 32)].
__global__ void warp_kernel(int* out) {
  const int lane = threadIdx.x % 32;
  const int v = lane + 1;
  out[lane * 7 + 0] = cuda::warp_sum(v);
  out[lane * 7 + 1] = cuda::warp_sum(v, 16);
  out[lane * 7 + 2] = int(__ballot_sync(0xffffffffu, lane % 2));
  out[lane * 7 + 3] = __shfl_sync(0xffffffffu, v, 5);
  out[lane * 7 + 4] = __shfl_down_sync(0xffffffffu, v, 3);
  out[lane * 7 + 5] = __any_sync(0xffffffffu, lane == 7);
  out[lane * 7 + 6] = __all_sync(0xffffffffu, lane < 32);
}

// Half of the block at a barrier, the other half at a warp collective: stuck.
__global__ void divergent_barrier_kernel(int* out) {
  if (threadIdx.x < 32)
    __syncthreads();
  else
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, int(threadIdx.x), 1);
}

// Lanes 16..31 leave, lanes 0..15 shuffle with a full mask: undefined on a GPU.
__global__ void exited_lane_kernel(int* out) {
  if (threadIdx.x >= 16) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, int(threadIdx.x), 1);
}

__global__ void trap_kernel(int*) {
  if (threadIdx.x == 3) __trap();
}

// C = A B (16 x 16 x 16, bf16 in, fp32 out) with one warp's wmma calls.
__global__ void wmma_kernel(const uint16_t* a, const uint16_t* b, float* c) {
  using namespace nvcuda;
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> fc;
  wmma::fill_fragment(fc, 0.0f);
  wmma::load_matrix_sync(fa, reinterpret_cast<const __nv_bfloat16*>(a), 16);
  wmma::load_matrix_sync(fb, reinterpret_cast<const __nv_bfloat16*>(b), 16);
  wmma::mma_sync(fc, fa, fb, fc);
  wmma::store_matrix_sync(c, fc, 16, wmma::mem_row_major);
}

// _simt_selftest(case, blocks, a, b) -> the kernel's output (int32, or fp32 for "wmma").
at::Tensor simt_selftest(const std::string& name, int64_t blocks, const at::Tensor& a,
                         const at::Tensor& b) {
  const auto io = at::TensorOptions().dtype(at::kInt);
  const cudaStream_t stream = nullptr;
  if (name == "reverse" || name == "reverse_nosync") {
    auto out = at::full({blocks * 64}, -7, io);
    auto k = name == "reverse" ? reverse_kernel<true> : reverse_kernel<false>;
    cuda::launch(k, unsigned(blocks), 64, stream, out.mutable_data_ptr<int>());
    return out;
  }
  if (name == "last_writer") {
    auto out = at::full({blocks}, -7, io);
    cuda::launch(last_writer_kernel, unsigned(blocks), 256, stream, out.mutable_data_ptr<int>());
    return out;
  }
  if (name == "warp") {
    auto out = at::full({32, 7}, -7, io);
    cuda::launch(warp_kernel, 1, 32, stream, out.mutable_data_ptr<int>());
    return out;
  }
  if (name == "divergent_barrier" || name == "exited_lane" || name == "trap") {
    auto out = at::zeros({64}, io);
    auto k = name == "trap"          ? trap_kernel
             : name == "exited_lane" ? exited_lane_kernel
                                     : divergent_barrier_kernel;
    cuda::launch(k, 1, 64, stream, out.mutable_data_ptr<int>());
    return out;
  }
  if (name == "empty_grid") {
    cuda::launch(trap_kernel, 0, 64, stream, nullptr);
    return at::zeros({0}, io);
  }
  if (name == "wmma") {
    TORCH_CHECK(a.scalar_type() == at::kBFloat16 && b.scalar_type() == at::kBFloat16 &&
                    a.numel() == 256 && b.numel() == 256,
                "_simt_selftest: wmma takes two [16, 16] bf16 tensors");
    const auto ac = a.contiguous(), bc = b.contiguous();
    auto c = at::full({16, 16}, -7.0f, at::TensorOptions().dtype(at::kFloat));
    cuda::launch(wmma_kernel, 1, 32, stream,
                 reinterpret_cast<const uint16_t*>(ac.const_data_ptr<at::BFloat16>()),
                 reinterpret_cast<const uint16_t*>(bc.const_data_ptr<at::BFloat16>()),
                 c.mutable_data_ptr<float>());
    return c;
  }
  TORCH_CHECK_VALUE(false, "_simt_selftest: unknown case '", name, "'");
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(mta_ext, m) {
  m.def("_simt_selftest(str name, int blocks, Tensor a, Tensor b) -> Tensor", &simt_selftest);
}

}  // namespace mta_ext
