// Value checks shared by the ops (see common/checks.h). Callers run them only when
// value_checks_enabled() (CPU tensors, or the debug mode: common/debug.h).
#include "common/checks.h"

#include "common/debug.h"

#include <ATen/ATen.h>

namespace mta_ext {

void check_ranges_values(const char* op, const char* name, const at::Tensor& ranges,
                         int64_t num_rows, const char* rows_name) {
  note_value_check();
  if (ranges.numel() == 0) return;
  auto starts = ranges.select(1, 0);
  auto ends = ranges.select(1, 1);
  auto bad = starts.lt(0).logical_or_(starts.gt(ends)).logical_or_(ends.gt(num_rows));
  if (!bad.any().item<bool>()) return;                              // host sync: debug mode
  const int64_t k = bad.nonzero().select(1, 0)[0].item<int64_t>();  // host sync: debug mode
  const int64_t s = starts[k].item<int64_t>();                      // host sync: debug mode
  const int64_t e = ends[k].item<int64_t>();                        // host sync: debug mode
  TORCH_CHECK_VALUE(false, op, ": ", name, "[", k, "] = (", s, ", ", e,
                    ") is invalid: need 0 <= start <= end <= ", rows_name, " = ", num_rows);
}

void check_index_values(const char* op, const char* name, const at::Tensor& idx, int64_t num_rows,
                        const char* rows_name) {
  note_value_check();
  if (idx.numel() == 0) return;
  auto bad = idx.lt(0).logical_or_(idx.ge(num_rows));
  if (!bad.any().item<bool>()) return;                              // host sync: debug mode
  const int64_t i = bad.nonzero().select(1, 0)[0].item<int64_t>();  // host sync: debug mode
  TORCH_CHECK_VALUE(false, op, ": ", name, "[", i,
                    "] = ", idx[i].item<int64_t>(),  // host sync: debug mode
                    " is out of range: need 0 <= ", name, "[i] < ", rows_name, " = ", num_rows);
}

void check_nonnegative(const char* op, const char* name, const at::Tensor& w) {
  note_value_check();
  if (w.numel() == 0) return;
  // !(w >= 0) also catches NaN.
  auto bad = w.ge(0).logical_not_().logical_or_(w.isinf());
  if (!bad.any().item<bool>()) return;  // host sync: debug mode
  const int64_t i =
      bad.reshape(-1).nonzero().select(1, 0)[0].item<int64_t>();  // host sync: debug mode
  TORCH_CHECK_VALUE(false, op, ": ", name, " must be finite and >= 0, but ", name, "[", i,
                    "] = ", w.reshape(-1)[i].item<double>());  // host sync: debug mode
}

}  // namespace mta_ext
