// The Python module shell of mta_ext._C plus library-wide utility ops.
//
// The ops register themselves through static initialisers (TORCH_LIBRARY*) when the shared
// object is loaded; `import mta_ext._C` is just the portable way to load it. No pybind11 and no
// libtorch_python here: that keeps compile times low and avoids pybind11 version clashes.
#include <Python.h>

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <mutex>
#include <set>

namespace mta_ext {
namespace {

// Number of distinct threads that at::parallel_for actually used inside *this* library. It
// proves the extension was compiled with OpenMP: without -fopenmp, parallel_for is serial.
int64_t parallel_probe(int64_t n) {
  std::mutex mu;
  std::set<int> ids;
  at::parallel_for(0, n, 1, [&](int64_t, int64_t) {
    // A little work so that one thread cannot finish every chunk before the others start.
    volatile double x = 0;
    for (int i = 0; i < 200000; ++i) x = x + 1e-9 * i;
    std::lock_guard<std::mutex> lock(mu);
    ids.insert(at::get_thread_num());
  });
  return static_cast<int64_t>(ids.size());
}

bool compiled_with_openmp() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

}  // namespace

TORCH_LIBRARY(mta_ext, m) {
  // Where the fake (meta) kernels and autograd formulas live.
  m.set_python_module("mta_ext.ops");
  m.def("_parallel_probe(int n) -> int", &parallel_probe);
  m.def("_compiled_with_openmp() -> bool", &compiled_with_openmp);
}

}  // namespace mta_ext

extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef def = {PyModuleDef_HEAD_INIT, "_C",
                            "mta_ext compiled ops (registered as torch.ops.mta_ext.*)", -1,
                            nullptr};
  return PyModule_Create(&def);
}
