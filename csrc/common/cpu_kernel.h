// MTA_CPU_KERNEL(cpu, cuda): what an op registers for CPU tensors. The CPU kernel, except in a
// build with the SIMT backend (MTA_WITH_SIMT), where it is a router that runs the op's CUDA
// kernel on the CPU while the backend is active (mta_ext._simt.enabled()), so the tests run the
// CUDA code through the same op, autograd formula and fake kernel as on a GPU.
#pragma once

#ifdef MTA_WITH_SIMT
#include "simt/runtime.h"
#define MTA_CPU_KERNEL(cpu, cuda) (&::mta_ext::simt_rt::Route<&cpu, &cuda>::call)
#else
#define MTA_CPU_KERNEL(cpu, cuda) (&cpu)
#endif
