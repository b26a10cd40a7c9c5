// Argument checks shared by every op. Each message names the argument (and the op), so a user
// sees "segment_pool: ranges must be ..." instead of a bare assertion.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <string>

namespace mta_ext {

inline bool is_float_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

inline void check_float(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_TYPE(is_float_dtype(t.scalar_type()), op, ": ", name,
                   " must be float32, float64, float16 or bfloat16, got ", t.scalar_type());
}

inline void check_index(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kLong || t.scalar_type() == at::kInt, op, ": ", name,
                   " must be an int64 or int32 tensor, got ", t.scalar_type());
}

inline void check_dim(const char* op, const char* name, const at::Tensor& t, int64_t dim,
                      const char* shape) {
  TORCH_CHECK_VALUE(t.dim() == dim, op, ": ", name, " must have shape ", shape, " (", dim,
                    "-D), got ", t.dim(), "-D shape ", t.sizes());
}

inline void check_same_device(const char* op, const char* name, const at::Tensor& t,
                              const char* ref_name, const at::Tensor& ref) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but ",
                    ref_name, " is on ", ref.device(), "; move them to the same device");
}

// Value checks: callers run them only when value_checks_enabled() (common/debug.h).
// ranges [N,2] must satisfy 0 <= start <= end <= num_rows. Done with tensor ops so that it works
// on any device (host syncs on CUDA: the debug mode only); reports the first offending unit.
void check_ranges_values(const char* op, const char* name, const at::Tensor& ranges,
                         int64_t num_rows, const char* rows_name);

// Every index of idx (1-D) must satisfy 0 <= idx[i] < num_rows; reports the first offending one.
void check_index_values(const char* op, const char* name, const at::Tensor& idx, int64_t num_rows,
                        const char* rows_name);

// weights must be finite and >= 0.
void check_nonnegative(const char* op, const char* name, const at::Tensor& w);

}  // namespace mta_ext
