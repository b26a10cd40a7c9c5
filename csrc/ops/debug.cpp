// The debug mode flag and the test hooks of the trust boundary (see common/debug.h).
#include "common/debug.h"

#include <torch/library.h>

#ifdef MTA_WITH_SIMT
#include "simt/runtime.h"
#endif

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace mta_ext {
namespace {

bool env_debug() {
  const char* v = std::getenv("MTA_EXT_DEBUG");
  return v != nullptr && *v != '\0' && std::strcmp(v, "0") != 0;
}

std::atomic<bool> g_debug{env_debug()};
std::atomic<bool> g_pretend_device{false};
std::atomic<int64_t> g_value_checks{0};
std::atomic<int64_t> g_metadata_fallbacks{0};

void set_debug_op(bool on) { set_debug(on); }
bool debug_op() { return debug_enabled(); }
void pretend_device_op(bool on) { g_pretend_device.store(on); }
std::vector<int64_t> sync_counters_op() {
  return {g_value_checks.load(), g_metadata_fallbacks.load()};
}
void reset_sync_counters_op() {
  g_value_checks.store(0);
  g_metadata_fallbacks.store(0);
}

}  // namespace

bool debug_enabled() { return g_debug.load(std::memory_order_relaxed); }
void set_debug(bool on) { g_debug.store(on); }

bool host_readable(const at::Tensor& t) {
#ifdef MTA_WITH_SIMT
  if (simt_rt::active()) return false;  // the SIMT backend's CPU tensors stand for device memory
#endif
  return t.is_cpu() && !g_pretend_device.load(std::memory_order_relaxed);
}

bool value_checks_enabled(const at::Tensor& t) { return host_readable(t) || debug_enabled(); }

void note_value_check() { g_value_checks.fetch_add(1, std::memory_order_relaxed); }
void note_host_metadata_fallback() { g_metadata_fallbacks.fetch_add(1, std::memory_order_relaxed); }

TORCH_LIBRARY_FRAGMENT(mta_ext, m) {
  // Host-side utilities (no tensors): the debug mode and, for the tests, the counters and a
  // switch that makes CPU tensors count as device tensors (value checks skipped, missing host
  // metadata counted as a fallback), to test the trust boundary without a GPU.
  m.def("_set_debug(bool on) -> ()", &set_debug_op);
  m.def("_debug() -> bool", &debug_op);
  m.def("_pretend_device(bool on) -> ()", &pretend_device_op);
  m.def("_sync_counters() -> int[]", &sync_counters_op);
  m.def("_reset_sync_counters() -> ()", &reset_sync_counters_op);
}

}  // namespace mta_ext
