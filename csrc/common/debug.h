// The trust boundary of the ops (docs/DESIGN.md, "Validation"). Every call checks METADATA
// (dtype, rank, device, sizes: free, on the host). VALUE checks (ranges in bounds, cu_units
// monotone, weights finite and >= 0) read tensor contents: free for CPU tensors, a host sync for
// device tensors. They run for CPU tensors always, and on other devices only in the debug mode
// (`mta_ext.set_debug(True)` or MTA_EXT_DEBUG=1 in the environment when the library loads):
// `UnitLayout` / `Aligner` validate the layout once on the CPU when they build it, so the
// default CUDA path never waits for the host.
//
// Host syncs (`.item()`, `.cpu()`, ...) in code reachable from a CUDA kernel are allowed only
// on a line marked `// host sync: <why>` with why one of "debug mode", "CPU only" or "raw-op
// fallback" (host metadata the caller did not pass); python_tests/test_no_host_sync.py enforces
// it, and counts (value_checks_run / host_metadata_syncs) prove the default path takes none.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace mta_ext {

bool debug_enabled();
void set_debug(bool on);

// Whether value checks run for a tensor on t's device: CPU always (unless a test pretends CPU
// tensors live on a device, see _pretend_device), other devices in the debug mode.
bool value_checks_enabled(const at::Tensor& t);

// Whether t's contents can be read on the host for free (a CPU tensor, and no test pretends
// otherwise). Kernels use it to decide whether missing host metadata costs a sync.
bool host_readable(const at::Tensor& t);

// Counters for the tests: value checks run and host-metadata fallbacks taken (each one a host
// sync on a device).
void note_value_check();
void note_host_metadata_fallback();

}  // namespace mta_ext
