// The host-side interface of the SIMT backend (csrc/simt/runtime.cpp): whether it is active,
// its configuration and counters, and the routing of an op's CPU registration to its CUDA
// kernels while it is active. Included by the op front files in MTA_WITH_SIMT builds only.
#pragma once

#include <cstdint>
#include <vector>

namespace mta_ext::simt_rt {

// While active, the ops called on CPU tensors run their CUDA kernels (emulated), with device
// semantics: no host value checks, host metadata as on a GPU (common/debug.h host_readable).
bool active();
// shuffle_seed < 0: deterministic order (thread 0 first); sm: the compute capability reported to
// the kernels' host code (e.g. 70 takes the paths for GPUs without bf16 tensor cores).
void configure(bool on, int64_t shuffle_seed, int64_t sm);
// [launches, blocks, block barriers released, warp collectives completed] since the last reset.
std::vector<int64_t> stats();
void reset_stats();

// An op's CPU registration in a SIMT build: the CPU kernel, or the CUDA kernel while active.
template <auto Cpu, auto Cuda>
struct Route;
template <typename R, typename... A, R (*Cpu)(A...), R (*Cuda)(A...)>
struct Route<Cpu, Cuda> {
  static R call(A... a) { return active() ? Cuda(a...) : Cpu(a...); }
};

}  // namespace mta_ext::simt_rt
