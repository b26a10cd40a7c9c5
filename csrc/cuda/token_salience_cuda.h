// token_salience: the CUDA kernel (cuda/token_salience_cuda.cu), registered by
// ops/token_salience.cpp.
#pragma once

#include <ATen/core/Tensor.h>

namespace mta_ext {

at::Tensor token_salience_cuda(const at::Tensor& hidden, const at::Tensor& attention_mask,
                               int64_t key_block);

}  // namespace mta_ext
