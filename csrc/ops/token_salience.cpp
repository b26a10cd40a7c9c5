// token_salience: schema, argument checks and dispatch (the kernels:
// cpu/token_salience_cpu.cpp, cuda/token_salience_cuda.cu). Metadata checks only: the op reads
// no index values.
#include "ops/token_salience.h"

#include "common/checks.h"
#include "common/cpu_kernel.h"
#include "cpu/token_salience_cpu.h"
#if defined(MTA_WITH_CUDA) || defined(MTA_WITH_SIMT)
#include "cuda/token_salience_cuda.h"
#endif

#include <ATen/ATen.h>
#include <torch/library.h>

namespace mta_ext {

at::Tensor check_token_salience_args(const char* op, const at::Tensor& hidden,
                                     const at::Tensor& attention_mask, int64_t key_block) {
  check_float(op, "hidden", hidden);
  check_dim(op, "hidden", hidden, 3, "[B, T, D]");
  check_dim(op, "attention_mask", attention_mask, 2, "[B, T]");
  const auto mt = attention_mask.scalar_type();
  TORCH_CHECK_TYPE(mt == at::kBool || at::isIntegralType(mt, /*includeBool=*/false), op,
                   ": attention_mask must be a bool or integer tensor, got ", mt);
  TORCH_CHECK_VALUE(
      attention_mask.size(0) == hidden.size(0) && attention_mask.size(1) == hidden.size(1), op,
      ": attention_mask must have shape [B, T] = ", hidden.sizes().slice(0, 2),
      " like hidden, got ", attention_mask.sizes());
  check_same_device(op, "attention_mask", attention_mask, "hidden", hidden);
  TORCH_CHECK_VALUE(key_block >= 0, op, ": key_block must be >= 0 (0 = automatic), got ",
                    key_block);
  return mt == at::kBool ? attention_mask.contiguous() : attention_mask.ne(0).contiguous();
}

TORCH_LIBRARY_FRAGMENT(mta_ext, m) {
  m.def("token_salience(Tensor hidden, Tensor attention_mask, int key_block=0) -> Tensor");
}

TORCH_LIBRARY_IMPL(mta_ext, CPU, m) {
  m.impl("token_salience", MTA_CPU_KERNEL(token_salience_cpu, token_salience_cuda));
}

#ifdef MTA_WITH_CUDA
TORCH_LIBRARY_IMPL(mta_ext, CUDA, m) { m.impl("token_salience", &token_salience_cuda); }
#endif

}  // namespace mta_ext
