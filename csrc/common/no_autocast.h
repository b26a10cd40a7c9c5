// Kernels compute in their own precision (fp32 accumulation, fp64 for fp64 inputs), whatever
// autocast region the caller is in. Our ops have no autocast kernel, so the dispatcher falls
// through the Autocast keys and they stay enabled in thread-local state; every at:: call inside
// a kernel (at::mm, ...) would then be re-cast by autocast, mixing dtypes (bf16 mm result,
// fp32 addmm_ operands). Each kernel entry point opens this guard first.
#pragma once

#include <c10/core/DispatchKeySet.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

namespace mta_ext {

struct NoAutocast {
  c10::impl::ExcludeDispatchKeyGuard guard{c10::autocast_dispatch_keyset};
};

}  // namespace mta_ext
