// token_salience: the CPU kernel (cpu/token_salience_cpu.cpp), registered by
// ops/token_salience.cpp.
#pragma once

#include <ATen/core/Tensor.h>

namespace mta_ext {

at::Tensor token_salience_cpu(const at::Tensor& hidden, const at::Tensor& attention_mask,
                              int64_t key_block);

}  // namespace mta_ext
