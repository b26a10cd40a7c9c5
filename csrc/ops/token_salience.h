// Token salience (docs/DESIGN.md §2.1): the attention each valid token receives under
// parameter-free self-attention over the normalised hidden states. Shared between the CPU (.cpp)
// and CUDA (.cu) implementations: argument checks and the exact constants of the maths.
#pragma once

#include <ATen/core/Tensor.h>

namespace mta_ext {

// Ĥ = H / (std_d(H) + kSalienceStdEps), Bessel-corrected std (0 when D == 1).
constexpr double kSalienceStdEps = 1e-5;

// Checks (device independent, metadata only): hidden float [B,T,D]; attention_mask bool or
// integer [B,T] on the same device; key_block >= 0. Returns the mask as a contiguous bool tensor.
at::Tensor check_token_salience_args(const char* op, const at::Tensor& hidden,
                                     const at::Tensor& attention_mask, int64_t key_block);

}  // namespace mta_ext
