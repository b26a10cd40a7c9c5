// The SIMT backend's control ops (mta_ext._simt wraps them): on/off, shuffled mode, the
// compute capability the kernels see, and the scheduler's counters.
#include "simt/runtime.h"

#include <torch/library.h>

namespace mta_ext {
namespace {

void simt_configure(bool on, int64_t shuffle_seed, int64_t sm) {
  simt_rt::configure(on, shuffle_seed, sm);
}
std::vector<int64_t> simt_stats() { return simt_rt::stats(); }
void simt_reset_stats() { simt_rt::reset_stats(); }

}  // namespace

TORCH_LIBRARY_FRAGMENT(mta_ext, m) {
  m.def("_simt_configure(bool on, int shuffle_seed, int sm) -> ()", &simt_configure);
  m.def("_simt_stats() -> int[]", &simt_stats);
  m.def("_simt_reset_stats() -> ()", &simt_reset_stats);
}

}  // namespace mta_ext
